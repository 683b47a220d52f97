//! The wire format: frames and bencode. Pure functions over byte slices.

pub mod bencode;
pub mod frame;
pub mod json;
pub mod outbuf;

pub use bencode::{decode, DecodeError, DecodeErrorKind, EncodeError, IntoKey, Key, Reader, Value};
pub use frame::{split_frame, write_frame, write_header, FrameError, HEADER_LEN, PROTOCOL_MAX};
