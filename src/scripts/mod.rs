//! Rhai scripts: custom message keys and event hooks, in a sandbox.
//!
//! Every `*.rhai` file of the scripts directory is compiled once and its
//! top level run once; there it registers what it handles:
//!
//! ```rhai
//! on_message("get-uptime", |value| uptime());
//! on_event("verification-finished", |ev| log(`torrent ${ev.id}: ${ev.completed} bytes good`));
//! ```
//!
//! A handler's result is the reply: `()` is `succeeded`, [`ScriptReply`]s
//! made by `succeeded()`, `failed(reason)`, `bad_format()` and
//! `reply(key, value)` say exactly what to send, and any other value is
//! sent as data under the message's own key. A thrown value or a script
//! error is `failed` with the message. Handlers and hooks run with `this`
//! bound to the script's state map, which lives as long as the daemon (and
//! across reloads, by file name).
//!
//! The daemon is single-threaded, so every call is bounded: operations,
//! wall-clock time, call depth, expression depth, string, array and map
//! sizes ([`Limits`]); `eval` is disabled, imports are confined to the
//! scripts directory, and Rhai itself has no file or process access.

mod api;
mod convert;
mod host;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{info, warn};
use rhai::module_resolvers::FileModuleResolver;
use rhai::{
    CallFnOptions, Dynamic, Engine, EvalAltResult, FnPtr, Map, ModuleResolver, Position, Scope, AST,
};

use crate::codec::Value;
use crate::registry::{CheckEvent, Event, Registry};
use crate::reply::Reply;
pub use api::ScriptReply;
pub use convert::{to_dynamic, to_value};
pub use host::EVENTS;
use host::{Collected, Host};

/// The bounds on every script call. Zero means no limit for the counts.
/// Its defaults are written once, here, as the command line's.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Limits {
    /// Most Rhai operations one script call may run (0 = no limit)
    #[arg(
        long = "script-max-operations",
        value_name = "N",
        default_value_t = 1_000_000
    )]
    pub max_operations: u64,
    /// Longest time one script call may run, in milliseconds
    #[arg(long = "script-timeout-ms", value_name = "MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub timeout_ms: u64,
    /// Deepest nesting of function calls in a script
    #[arg(long = "script-max-call-depth", value_name = "N", default_value_t = 32)]
    pub max_call_depth: usize,
    /// Deepest nesting of expressions in a script (checked when it compiles)
    #[arg(long = "script-max-expr-depth", value_name = "N", default_value_t = 64)]
    pub max_expr_depth: usize,
    /// Longest string a script may build, in bytes
    #[arg(long = "script-max-string", value_name = "BYTES", default_value_t = 1 << 20)]
    pub max_string: usize,
    /// Most elements of an array (or bytes of a blob) a script may build
    #[arg(long = "script-max-array", value_name = "N", default_value_t = 100_000)]
    pub max_array: usize,
    /// Most entries of a map a script may build
    #[arg(long = "script-max-map", value_name = "N", default_value_t = 10_000)]
    pub max_map: usize,
}

impl Limits {
    /// Wall-clock time per call.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// The limits alone on a command line, to read their defaults.
#[derive(clap::Parser)]
struct BareLimits {
    #[command(flatten)]
    limits: Limits,
}

impl Default for Limits {
    /// The command line's defaults (written once, in the attributes).
    fn default() -> Limits {
        match <BareLimits as clap::Parser>::try_parse_from(["tripcd"]) {
            Ok(b) => b.limits,
            Err(e) => unreachable!("the empty command line is valid: {e}"),
        }
    }
}

/// Why scripts could not be loaded: the file, the line when known, and
/// what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// A file or the directory could not be read.
    Read {
        /// What could not be read.
        path: PathBuf,
        /// What the system said.
        error: String,
    },
    /// A script does not compile, or its top level failed.
    Script {
        /// The script file.
        path: PathBuf,
        /// The line, "?" when unknown.
        line: String,
        /// Rhai's message.
        error: String,
    },
    /// A script registers a key a built-in handles.
    BuiltinKey {
        /// The script file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// Two registrations of one key.
    DuplicateKey {
        /// The script file registering it again.
        path: PathBuf,
        /// The key.
        key: String,
        /// The file that registered it first.
        first: String,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read { path, error } => write!(f, "{}: {error}", path.display()),
            LoadError::Script { path, line, error } => {
                write!(f, "{}:{line}: {error}", path.display())
            }
            LoadError::BuiltinKey { path, key } => write!(
                f,
                "{}: key \"{key}\" is a built-in key of tripcd; a script may not replace it",
                path.display()
            ),
            LoadError::DuplicateKey { path, key, first } => write!(
                f,
                "{}: key \"{key}\" is already handled by {first}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for LoadError {}

struct Script {
    file: Rc<str>,
    ast: AST,
    /// `this` in every call: the per-script state map.
    state: Dynamic,
}

/// A message key a script handles.
struct KeyHandler {
    key: String,
    script: usize,
    func: FnPtr,
}

/// The loaded scripts and the engine that runs them.
pub struct Scripts {
    dir: PathBuf,
    limits: Limits,
    engine: Engine,
    host: Rc<Host>,
    scripts: Vec<Script>,
    keys: Vec<KeyHandler>,
    hooks: HashMap<String, Vec<(usize, FnPtr)>>,
}

impl Scripts {
    /// Compiles every `*.rhai` in `dir` (in name order) and runs each top
    /// level once. A key that a built-in already handles (`is_builtin`),
    /// or that two scripts register, is an error naming both. A missing
    /// directory holds no scripts.
    pub fn load(
        dir: &Path,
        limits: Limits,
        registry: Rc<RefCell<Registry>>,
        started: Instant,
        is_builtin: &dyn Fn(&str) -> bool,
    ) -> Result<Scripts, LoadError> {
        let host = Rc::new(Host {
            registry,
            deadline: Cell::new(None),
            started,
            current: RefCell::new(Rc::from("")),
            collecting: RefCell::new(None),
        });
        let engine = make_engine(dir, &limits, &host);
        let mut me = Scripts {
            dir: dir.to_path_buf(),
            limits,
            engine,
            host,
            scripts: Vec::new(),
            keys: Vec::new(),
            hooks: HashMap::new(),
        };
        for path in script_files(dir)? {
            me.load_one(&path, is_builtin)?;
        }
        Ok(me)
    }

    /// Loads the same directory again with the same limits, keeping each
    /// script's state by file name. On error nothing changes.
    pub fn reload(&self, is_builtin: &dyn Fn(&str) -> bool) -> Result<Scripts, LoadError> {
        let mut next = Scripts::load(
            &self.dir,
            self.limits.clone(),
            Rc::clone(&self.host.registry),
            self.host.started,
            is_builtin,
        )?;
        for s in &mut next.scripts {
            if let Some(old) = self.scripts.iter().find(|o| o.file == s.file) {
                s.state = old.state.clone();
            }
        }
        Ok(next)
    }

    fn load_one(
        &mut self,
        path: &Path,
        is_builtin: &dyn Fn(&str) -> bool,
    ) -> Result<(), LoadError> {
        let file: Rc<str> = path
            .file_name()
            .map_or(Rc::from(""), |f| Rc::from(f.to_string_lossy().as_ref()));
        let source = std::fs::read_to_string(path).map_err(|e| LoadError::Read {
            path: path.to_path_buf(),
            error: e.to_string(),
        })?;
        let ast = self
            .engine
            .compile(&source)
            .map_err(|e| LoadError::Script {
                path: path.to_path_buf(),
                line: line_of(e.1),
                error: e.0.to_string(),
            })?;

        *self.host.current.borrow_mut() = Rc::clone(&file);
        *self.host.collecting.borrow_mut() = Some(Collected::default());
        self.host
            .deadline
            .set(Some(Instant::now() + self.limits.timeout()));
        let ran = self.engine.run_ast_with_scope(&mut Scope::new(), &ast);
        self.host.deadline.set(None);
        let collected = self.host.collecting.borrow_mut().take().unwrap_or_default();
        ran.map_err(|e| LoadError::Script {
            path: path.to_path_buf(),
            line: line_of(e.position()),
            error: e.to_string(),
        })?;

        let index = self.scripts.len();
        for (key, func) in collected.keys {
            if is_builtin(&key) {
                return Err(LoadError::BuiltinKey {
                    path: path.to_path_buf(),
                    key,
                });
            }
            if let Some(other) = self.keys.iter().find(|k| k.key == key) {
                // Not yet in `scripts`: the key repeats within this file.
                let other_file = self.scripts.get(other.script).map_or(&*file, |s| &*s.file);
                return Err(LoadError::DuplicateKey {
                    path: path.to_path_buf(),
                    key,
                    first: other_file.to_string(),
                });
            }
            self.keys.push(KeyHandler {
                key,
                script: index,
                func,
            });
        }
        for (event, func) in collected.hooks {
            self.hooks.entry(event).or_default().push((index, func));
        }
        self.scripts.push(Script {
            file,
            ast,
            state: Dynamic::from_map(Map::new()),
        });
        Ok(())
    }

    /// The keys scripts handle, with the index [`Scripts::call`] takes.
    pub fn keys(&self) -> impl Iterator<Item = (usize, &str)> {
        self.keys
            .iter()
            .enumerate()
            .map(|(i, k)| (i, k.key.as_str()))
    }

    /// The file names of the loaded scripts.
    pub fn files(&self) -> Vec<&str> {
        self.scripts.iter().map(|s| &*s.file).collect()
    }

    /// Whether any script hooks an event.
    pub fn has_hooks(&self) -> bool {
        !self.hooks.is_empty()
    }

    /// Runs the handler of script key number `index` on `value`.
    pub fn call(&mut self, index: usize, value: &Value) -> Reply {
        let Some(handler) = self.keys.get(index) else {
            return Reply::NotSupported;
        };
        let Some(script) = self.scripts.get_mut(handler.script) else {
            return Reply::NotSupported;
        };
        let result = run(
            &self.engine,
            &self.host,
            &self.limits,
            script,
            &handler.func,
            to_dynamic(value),
            ("key", &handler.key),
        );
        match result {
            Ok(d) => self.reply_of(handler.script, &handler.key, d),
            Err(why) => Reply::Failed(why),
        }
    }

    fn reply_of(&self, script: usize, key: &str, d: Dynamic) -> Reply {
        let file = &self.scripts[script].file;
        let data = |k: &str, v: &Dynamic| match to_value(v) {
            Ok(v) => Reply::Data(k.to_string().into(), v),
            Err(why) => {
                warn!("script {file}: key \"{key}\": {why}");
                Reply::Failed(format!("script error: {why}"))
            }
        };
        if d.is_unit() {
            return Reply::Done;
        }
        if !d.is::<ScriptReply>() {
            return data(key, &d);
        }
        match d.try_cast::<ScriptReply>() {
            Some(ScriptReply::Succeeded) => Reply::Done,
            Some(ScriptReply::Failed(why)) => Reply::Failed(why),
            Some(ScriptReply::BadFormat) => Reply::BadFormat,
            Some(ScriptReply::Data(k, v)) => data(&k, &v),
            None => Reply::Failed("script error: reply could not be read".into()),
        }
    }

    /// Tells the hooks of the registry's committed events, in order.
    pub fn fire_registry_events(&mut self, events: Vec<Event>) {
        for event in events {
            let (name, payload) = self.describe_event(&event);
            self.fire(name, payload);
        }
    }

    /// Tells the hooks that client `id` connected or went away.
    pub fn fire_client(&mut self, id: u64, connected: bool) {
        let name = if connected {
            "client-connected"
        } else {
            "client-disconnected"
        };
        if self.hooks.contains_key(name) {
            let mut m = Map::new();
            m.insert("client".into(), Dynamic::from_int(id as i64));
            self.fire(name, m);
        }
    }

    /// Tells the hooks that a peer of torrent `id` connected (its
    /// handshake done) or went away.
    pub fn fire_peer(&mut self, id: u64, address: &str, connected: bool) {
        let name = if connected {
            "peer-connected"
        } else {
            "peer-disconnected"
        };
        if self.hooks.contains_key(name) {
            let mut m = Map::new();
            m.insert("id".into(), Dynamic::from_int(id as i64));
            m.insert("address".into(), address.into());
            self.fire(name, m);
        }
    }

    fn describe_event(&self, event: &Event) -> (&'static str, Map) {
        let mut m = Map::new();
        let mut put = |k: &str, v: Dynamic| {
            m.insert(k.into(), v);
        };
        let int = |i: u64| Dynamic::from_int(i as i64);
        let name = match event {
            Event::Added { id } => {
                put("id", int(*id));
                if let Ok(reg) = self.host.registry.try_borrow() {
                    if let Some(t) = reg.torrents().get(*id) {
                        put("hash", t.hash_hex().into());
                        put(
                            "name",
                            String::from_utf8_lossy(&t.name()).into_owned().into(),
                        );
                    }
                }
                "torrent-added"
            }
            Event::Started { id } => {
                put("id", int(*id));
                "torrent-started"
            }
            Event::Metadata { id } => {
                put("id", int(*id));
                "torrent-metadata"
            }
            Event::Stopped { id } => {
                put("id", int(*id));
                "torrent-stopped"
            }
            Event::Completed { id } => {
                put("id", int(*id));
                "torrent-completed"
            }
            Event::Removed { id, hash, name } => {
                put("id", int(*id));
                put("hash", hash.clone().into());
                put("name", name.clone().into());
                "torrent-removed"
            }
            Event::Verified(CheckEvent::Finished {
                id,
                completed,
                complete,
            }) => {
                put("id", int(*id));
                put("completed", int(*completed));
                put("complete", Dynamic::from_bool(*complete));
                put("error", "".into());
                "verification-finished"
            }
            Event::Verified(CheckEvent::Failed { id, error }) => {
                put("id", int(*id));
                put("completed", int(0));
                put("complete", Dynamic::FALSE);
                put("error", error.message.clone().into());
                "verification-finished"
            }
            Event::SettingChanged { name } => {
                put("name", (*name).into());
                if let Ok(reg) = self.host.registry.try_borrow() {
                    if let Some(v) = reg.settings().to_value().get(name) {
                        put("value", to_dynamic(v));
                    }
                }
                "setting-changed"
            }
        };
        (name, m)
    }

    fn fire(&mut self, name: &str, payload: Map) {
        let Some(hooks) = self.hooks.get(name) else {
            return;
        };
        let payload = Dynamic::from_map(payload);
        for (script, func) in hooks {
            let Some(script) = self.scripts.get_mut(*script) else {
                continue;
            };
            // A hook's failure is logged by run(); the event stands.
            let _ = run(
                &self.engine,
                &self.host,
                &self.limits,
                script,
                func,
                payload.clone(),
                ("hook", name),
            );
        }
    }
}

/// Calls `func` of `script` with `arg` under every limit; the error is
/// logged (naming `what`: a key or a hook) and returned as the message a
/// `failed` reply carries.
fn run(
    engine: &Engine,
    host: &Host,
    limits: &Limits,
    script: &mut Script,
    func: &FnPtr,
    arg: Dynamic,
    what: (&str, &str),
) -> Result<Dynamic, String> {
    *host.current.borrow_mut() = Rc::clone(&script.file);
    let mut args: Vec<Dynamic> = func.curry().to_vec();
    args.push(arg);
    let start = Instant::now();
    host.deadline.set(Some(start + limits.timeout()));
    let options = CallFnOptions::new()
        .eval_ast(false)
        .rewind_scope(true)
        .bind_this_ptr(&mut script.state);
    let result = engine.call_fn_with_options::<Dynamic>(
        options,
        &mut Scope::new(),
        &script.ast,
        func.fn_name(),
        args,
    );
    host.deadline.set(None);
    result.map_err(|e| {
        let elapsed = start.elapsed().as_secs_f64() * 1000.0;
        let why = error_message(&e);
        warn!(
            "script {}: {} \"{}\" failed after {elapsed:.1} ms: {why}",
            script.file, what.0, what.1
        );
        why
    })
}

/// What a person should read for a script error: a thrown value as it is,
/// anything else as Rhai says it, with its line.
fn error_message(e: &EvalAltResult) -> String {
    match e {
        EvalAltResult::ErrorRuntime(v, _) => v.to_string(),
        EvalAltResult::ErrorTerminated(..) => "script ran out of time".to_string(),
        EvalAltResult::ErrorTooManyOperations(_) => "script ran too many operations".to_string(),
        other => other.to_string(),
    }
}

fn line_of(pos: Position) -> String {
    pos.line().map_or("?".into(), |l| l.to_string())
}

/// `*.rhai` files of `dir`, sorted by name; none if `dir` does not exist.
fn script_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(LoadError::Read {
                path: dir.to_path_buf(),
                error: format!("scripts directory: {e}"),
            })
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rhai") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Imports resolve only to files inside the scripts directory.
struct Confined {
    dir: PathBuf,
    inner: FileModuleResolver,
}

impl ModuleResolver for Confined {
    fn resolve(
        &self,
        engine: &Engine,
        _source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<rhai::Shared<rhai::Module>, Box<EvalAltResult>> {
        let p = Path::new(path);
        let escapes = p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir));
        let inside = || {
            let dir = self.dir.canonicalize().ok()?;
            let file = self.dir.join(format!("{path}.rhai")).canonicalize().ok()?;
            Some(file.starts_with(dir))
        };
        if escapes || inside() == Some(false) {
            return Err(Box::new(EvalAltResult::ErrorRuntime(
                format!("cannot import \"{path}\": imports must stay inside the scripts directory")
                    .into(),
                pos,
            )));
        }
        self.inner.resolve(engine, None, path, pos)
    }
}

fn make_engine(dir: &Path, limits: &Limits, host: &Rc<Host>) -> Engine {
    let mut engine = Engine::new();
    engine.set_max_operations(limits.max_operations);
    engine.set_max_call_levels(limits.max_call_depth);
    engine.set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth);
    engine.set_max_string_size(limits.max_string);
    engine.set_max_array_size(limits.max_array);
    engine.set_max_map_size(limits.max_map);
    engine.set_max_modules(64);
    engine.disable_symbol("eval");
    engine.set_module_resolver(Confined {
        dir: dir.to_path_buf(),
        inner: FileModuleResolver::new_with_path(dir),
    });
    {
        let host = Rc::clone(host);
        engine.on_progress(move |ops| {
            // Reading the clock every 256 operations keeps the guard cheap.
            if ops % 256 == 0 {
                if let Some(deadline) = host.deadline.get() {
                    if Instant::now() >= deadline {
                        return Some("timeout".into());
                    }
                }
            }
            None
        });
    }
    {
        let host = Rc::clone(host);
        engine.on_print(move |s| info!("script {}: {s}", host.current.borrow()));
    }
    {
        let host = Rc::clone(host);
        engine.on_debug(move |s, _, pos| {
            log::debug!(
                "script {} line {}: {s}",
                host.current.borrow(),
                line_of(pos)
            )
        });
    }
    api::register(&mut engine, host);
    engine
}
