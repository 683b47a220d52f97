//! TLS for test servers: a throwaway certificate authority and a server
//! certificate signed by it (rcgen), and blocking rustls server streams
//! over accepted sockets, so a thread-per-connection test server can speak
//! HTTPS with a few lines.
//!
//! The CA is also written as a PEM file, so a child process (the daemon
//! under test) can be told to trust it with `SSL_CERT_FILE`.

#![allow(dead_code)] // each test binary uses a different part

use std::fs;
use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};

/// A blocking TLS stream to one client: read and write it like the
/// `TcpStream` it wraps (whose timeouts still apply).
pub type TlsServerStream = StreamOwned<ServerConnection, TcpStream>;

/// A test CA and a server certificate it signed.
pub struct TestCa {
    /// Server settings presenting the server certificate.
    pub server: Arc<ServerConfig>,
    /// The CA certificate as a PEM file (for `SSL_CERT_FILE`).
    pub ca_file: PathBuf,
    /// The CA certificate, for a client's root store.
    pub ca_cert: CertificateDer<'static>,
}

impl TestCa {
    /// A root store trusting only this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca_cert.clone())
            .expect("the test CA is a valid root");
        roots
    }
}

/// A CA, and a server certificate for `127.0.0.1` and `localhost`; the CA
/// is written to `dir/ca.pem`.
pub fn make_ca(dir: &Path) -> TestCa {
    make_ca_for(dir, &["127.0.0.1", "localhost"])
}

/// Like [`make_ca`], with the server certificate naming `names` (IP
/// literals become IP addresses, others DNS names): a name the client does
/// not connect to gives a name mismatch.
pub fn make_ca_for(dir: &Path, names: &[&str]) -> TestCa {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("tripcd test CA {}", unique()));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);

    let names: Vec<String> = names.iter().map(|n| (*n).to_string()).collect();
    let leaf_key = KeyPair::generate().expect("server key");
    let mut leaf_params = CertificateParams::new(names).expect("server params");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "tripcd test tracker");
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("server certificate");

    fs::create_dir_all(dir).expect("CA directory");
    let ca_file = dir.join("ca.pem");
    fs::write(&ca_file, ca_cert.pem()).expect("write the CA PEM");

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .expect("server certificate and key");
    TestCa {
        server: Arc::new(server),
        ca_file,
        ca_cert: ca_cert.der().clone(),
    }
}

/// A number not used before in this process: two test CAs with one name
/// would confuse a verifier (the wrong one's key is tried, giving a bad
/// signature rather than an unknown issuer).
fn unique() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// Wraps an accepted connection and completes the TLS handshake (bounded
/// by the socket's timeouts, which the caller sets). A client that rejects
/// the certificate or never handshakes gives an error here.
pub fn accept(mut tcp: TcpStream, config: &Arc<ServerConfig>) -> io::Result<TlsServerStream> {
    let mut conn = ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        if conn.complete_io(&mut tcp)? == (0, 0) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "TLS handshake made no progress",
            ));
        }
    }
    Ok(StreamOwned::new(conn, tcp))
}

/// Ends a TLS stream cleanly (close_notify), as a well-behaved server does.
pub fn close(stream: &mut TlsServerStream) {
    stream.conn.send_close_notify();
    let _ = io::Write::flush(stream);
}
