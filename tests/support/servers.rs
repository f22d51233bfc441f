//! Real Redis and RabbitMQ servers for the tests that need them: Debian's
//! `redis-server` and `rabbitmq-server`, each started on free loopback
//! ports with its data in a temporary directory of its own, and never left
//! running after the test process, however it ends (see [`Keeper`]).
//!
//! A server that is not installed makes [`RedisServer::start`] and the
//! [`RabbitBroker`] constructors print one `skipping: ...` line and return
//! `None`, so that `cargo test` passes on a machine without them; under
//! `CI=true` it panics instead, so that CI cannot go green by skipping
//! (`.ci/run` installs both packages).
//!
//! ```ignore
//! mod support;
//! use support::servers::{RabbitBroker, RedisServer};
//!
//! let Some(redis) = RedisServer::start() else { return };
//! let Some(broker) = RabbitBroker::shared() else { return };
//! let url = broker.amqp_url(&broker.new_vhost("queue-tests"));
//! ```
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Whether a test may use `program` (from Debian package `package`): true
/// when it is installed. When it is not, prints one `skipping:` line and
/// returns false, except under `CI=true`, where it panics: CI must run
/// these tests, not skip them.
pub fn require(program: &str, package: &str) -> bool {
    if find_program(program).is_some() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{program} is not installed, and CI=true: the tests that need it must run \
             (apt-get install {package}; .ci/run installs it)"
        );
    }
    eprintln!(
        "skipping: {program} is not installed (apt-get install {package}; .ci/run installs it)"
    );
    false
}

/// `program` on PATH, or in the sbin directories a non-root PATH lacks
/// (where Debian puts `rabbitmq-server`).
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A free loopback port: bound to port 0, read and released. Another
/// process may take it before the server binds it, so every start retries
/// with fresh ports when the server exits early.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// A fresh, empty directory under the system temp dir, with a name no other
/// test process or server uses; mode 755, so that a server running as
/// another user (rabbitmq) can reach what is inside.
fn scratch_dir(kind: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = temp_base().join(format!("soapcache-{kind}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a server's temp dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .expect("chmod a server's temp dir");
    dir
}

/// `std::env::temp_dir()` when every directory above it lets other users
/// through (a server running as rabbitmq must reach its data dir), else
/// `/tmp`: a TMPDIR under a private home would make the broker fail at boot
/// with an error that does not say why.
fn temp_base() -> PathBuf {
    let base = std::env::temp_dir();
    let traversable = base
        .ancestors()
        .all(|dir| dir.metadata().is_ok_and(|m| m.mode() & 0o001 != 0));
    if traversable {
        base
    } else {
        PathBuf::from("/tmp")
    }
}

/// The last lines of a server's log, for a panic message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Sends a signal (`KILL`, `STOP`, `CONT`, ...) with the system's `kill`,
/// to a process or, with a negative id, to a process group.
fn signal(name: &str, target: i64) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg("--")
        .arg(target.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Whether a process that was ours is gone: exited and reaped, or a zombie
/// waiting for init (what is left of a killed grandchild).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => true,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding it leaves the state as valid as
    // before: every step below is a whole kill or a whole start.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A watchdog shell that kills a server when this test process goes away,
/// however it goes: a test's panic unwinds through `Drop`, but a `static`
/// (the shared broker) is never dropped, and `abort()`, a SIGKILL or a
/// Ctrl-C skip `Drop` altogether.
///
/// The shell reads its stdin, a pipe whose only writer is this process (the
/// write end is close-on-exec, so no server inherits it): the pipe reaches
/// end-of-file exactly when this process exits, and the shell then kills
/// the server's process group and the extra pids it was given (the
/// broker's epmd) and removes the server's directory. A process group and
/// not a pid, because the Erlang VM is a grandchild of the process we
/// spawn, and exists before it writes its pid file. The shell is in a
/// process group of its own, so a Ctrl-C to the terminal's group does not
/// kill it before it has done its work. `PR_SET_PDEATHSIG` would not do:
/// it fires when the spawning *thread* ends (each test is a thread), and it
/// does not reach a grandchild.
struct Keeper {
    child: Child,
    stdin: Option<ChildStdin>,
}

const KEEPER_SCRIPT: &str = r#"
trap '' INT HUP QUIT PIPE
dir=$1; shift
group=
while read -r what n; do
    case $what in
        group) group=$n ;;
        disarm) exit 0 ;;
    esac
done
# dash's kill takes no "--": a negative pid right after the signal is a group.
[ -n "$group" ] && kill -9 "-$group" 2>/dev/null
for pid in "$@"; do kill -9 "$pid" 2>/dev/null; done
rm -rf "$dir"
"#;

impl Keeper {
    /// A keeper for the server living in `dir`, which also kills `pids`.
    fn new(dir: &Path, pids: &[u32]) -> Keeper {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(KEEPER_SCRIPT)
            .arg("soapcache-keeper")
            .arg(dir)
            .args(pids.iter().map(u32::to_string))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start the keeper shell (sh)");
        let stdin = child.stdin.take();
        Keeper { child, stdin }
    }

    /// From now on the server to kill is process group `pgid`.
    fn watch(&mut self, pgid: u32) {
        self.say(&format!("group {pgid}"));
    }

    fn say(&mut self, line: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }

    /// The server was stopped the ordinary way: the keeper exits and kills
    /// nothing (its pids may be reused by then).
    fn disarm(&mut self) {
        self.say("disarm");
        self.stdin = None;
        let _ = self.child.wait();
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            self.disarm();
        }
    }
}

// ---------------------------------------------------------------- Redis --

/// A redis-server of its own for one test, on a free loopback port, with
/// no persistence (`--save '' --appendonly no`), its working dir a temp
/// dir. Stopped and removed on drop, also when the test panics.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    program: PathBuf,
    state: Mutex<RedisState>,
}

struct RedisState {
    child: Option<Child>,
    keeper: Keeper,
}

impl RedisServer {
    /// A fresh redis-server that answers PING; `None` (after a `skipping:`
    /// line) when redis-server is not installed, outside CI.
    pub fn start() -> Option<RedisServer> {
        if !require("redis-server", "redis-server") {
            return None;
        }
        let program = find_program("redis-server").expect("found just now");
        let dir = scratch_dir("redis");
        let mut keeper = Keeper::new(&dir, &[]);
        let started = Instant::now();
        // A port taken between free_port() and redis binding it makes
        // redis exit at once: try again with another.
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn_redis(&program, &dir, port);
            keeper.watch(child.id());
            match wait_for_redis(port, &mut child, Duration::from_secs(10)) {
                Ok(()) => {
                    eprintln!(
                        "redis-server ready on 127.0.0.1:{port} in {:.2} s",
                        started.elapsed().as_secs_f64()
                    );
                    return Some(RedisServer {
                        port,
                        dir,
                        program,
                        state: Mutex::new(RedisState {
                            child: Some(child),
                            keeper,
                        }),
                    });
                }
                Err(exited) if exited => {
                    let _ = child.wait();
                    continue;
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "redis-server did not answer PING within 10 s; its log:\n{}",
                        log_tail(&dir.join("redis.log"))
                    );
                }
            }
        }
        panic!(
            "redis-server exited at start five times; its log:\n{}",
            log_tail(&dir.join("redis.log"))
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.state).child.as_ref().map(Child::id)
    }

    /// A raw `PING`, with `limit` for the connect and for the answer: `Ok`
    /// on `+PONG`; a refused connection, a timeout (`WouldBlock` or
    /// `TimedOut`, as the platform says it) or `InvalidData` otherwise.
    pub fn ping(&self, limit: Duration) -> std::io::Result<()> {
        redis_ping(self.port, limit)
    }

    /// SIGKILL, as a crash: returns once the process is gone, so the port
    /// refuses connections from then on.
    pub fn kill9(&self) {
        let mut state = lock(&self.state);
        if let Some(mut child) = state.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the server keeps its port (connections are accepted by the
    /// kernel) but answers nothing until [`RedisServer::resume`].
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal("STOP", pid.into());
        }
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal("CONT", pid.into());
        }
    }

    /// Kills the server if it runs (also when paused) and starts it again on
    /// the same port, empty (no persistence); returns once it answers PING.
    pub fn restart(&self) {
        let mut state = lock(&self.state);
        if let Some(mut child) = state.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut child = spawn_redis(&self.program, &self.dir, self.port);
        state.keeper.watch(child.id());
        if wait_for_redis(self.port, &mut child, Duration::from_secs(10)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "redis-server did not start again on port {}; its log:\n{}",
                self.port,
                log_tail(&self.dir.join("redis.log"))
            );
        }
        state.child = Some(child);
    }

    /// Kills the server and removes its directory; what `Drop` does.
    pub fn stop(&self) {
        let mut state = lock(&self.state);
        if let Some(mut child) = state.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        state.keeper.disarm();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_redis(program: &Path, dir: &Path, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("redis.log"))
        .expect("open redis.log");
    Command::new(program)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup redis.log"))
        .stderr(log)
        // Its own group, for the keeper, and out of the terminal's Ctrl-C.
        .process_group(0)
        .spawn()
        .expect("start redis-server")
}

/// Polls until the server answers PING. `Err(true)` when the process exited
/// (port taken, bad argument), `Err(false)` at the deadline.
fn wait_for_redis(port: u16, child: &mut Child, limit: Duration) -> Result<(), bool> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if redis_ping(port, Duration::from_millis(500)).is_ok() {
            return Ok(());
        }
        if child.try_wait().ok().flatten().is_some() {
            return Err(true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(false)
}

fn redis_ping(port: u16, limit: Duration) -> std::io::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, limit)?;
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
    stream.write_all(b"PING\r\n")?;
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer)?;
    if &answer == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("PING answered {:?}", String::from_utf8_lossy(&answer)),
        ))
    }
}

// ------------------------------------------------------------- RabbitMQ --

/// A rabbitmq-server (Debian's, 3.10) of its own: AMQP, Erlang distribution
/// and its own epmd on three free loopback ports, data, logs and Erlang
/// cookie in a temp dir, no plugins, the system's /etc/rabbitmq ignored.
/// The user guest/guest works (from loopback only, which is all there is).
///
/// A start costs 7–15 s, so a test binary normally uses one broker,
/// [`RabbitBroker::shared`], and gives each test its own vhost
/// ([`RabbitBroker::new_vhost`]) or queue names; a test that kills or
/// restarts the broker takes one of its own with [`RabbitBroker::start`].
///
/// The VM runs as user `rabbitmq` when this process is root: the directory
/// script `/usr/lib/rabbitmq/bin/rabbitmq-server` is started directly with
/// that uid, not through `/usr/sbin/rabbitmq-server`, whose `su` puts the
/// VM in a session of its own where the [`Keeper`] could not reach it by
/// process group. Each broker has its own epmd (`ERL_EPMD_PORT`), started
/// by us: stopping one broker then never unregisters another, which one
/// shared `epmd -kill` would.
pub struct RabbitBroker {
    node: String,
    amqp_port: u16,
    dist_port: u16,
    epmd_port: u16,
    dir: PathBuf,
    scripts: PathBuf,
    /// uid and gid of user rabbitmq when we are root; `None`: run as we are.
    user: Option<(u32, u32)>,
    state: Mutex<RabbitState>,
}

struct RabbitState {
    /// The start script, leader of the process group the VM is in.
    server: Option<Child>,
    epmd: Option<Child>,
    keeper: Keeper,
}

/// How long a broker may take to listen, also on a busy two-core CI
/// machine (7 s on an idle one, 15 s with two other brokers booting).
const RABBIT_BOOT: Duration = Duration::from_secs(90);

impl RabbitBroker {
    /// The broker of this test binary, started by the first test that asks
    /// (the others wait for it) and killed when the process exits (the
    /// [`Keeper`]: a static is never dropped). `None` (after a `skipping:`
    /// line) when rabbitmq-server is not installed, outside CI. Do not kill
    /// or restart it: other tests use it at the same time.
    pub fn shared() -> Option<&'static RabbitBroker> {
        static SHARED: OnceLock<Option<RabbitBroker>> = OnceLock::new();
        SHARED.get_or_init(RabbitBroker::start).as_ref()
    }

    /// A broker of its own, for a test that kills or restarts it; stopped
    /// and its directory removed on drop.
    pub fn start() -> Option<RabbitBroker> {
        if !require("rabbitmq-server", "rabbitmq-server") || !require("epmd", "erlang-base") {
            return None;
        }
        let scripts = rabbit_scripts();
        let user = if is_root() {
            Some(user_ids("rabbitmq").expect(
                "user rabbitmq exists (made by the rabbitmq-server package) when running as root",
            ))
        } else {
            None
        };
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let node = format!(
            "soapcache-{}-{}@localhost",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let started = Instant::now();
        // Ports taken between free_port() and the broker binding them make
        // it stop at boot: try again with others (and a fresh directory).
        for _ in 0..3 {
            let dir = scratch_dir("rabbit");
            prepare_rabbit_dir(&dir, user);
            let epmd_port = free_port();
            let Some(epmd) = spawn_epmd(epmd_port, user) else {
                let _ = std::fs::remove_dir_all(&dir);
                continue;
            };
            // Armed with epmd's pid before the VM exists.
            let keeper = Keeper::new(&dir, &[epmd.id()]);
            let broker = RabbitBroker {
                node: node.clone(),
                amqp_port: free_port(),
                dist_port: free_port(),
                epmd_port,
                dir,
                scripts: scripts.clone(),
                user,
                state: Mutex::new(RabbitState {
                    server: None,
                    epmd: Some(epmd),
                    keeper,
                }),
            };
            let outcome = broker.boot(&mut lock(&broker.state));
            match outcome {
                Ok(()) => {
                    eprintln!(
                        "rabbitmq-server {node} ready on 127.0.0.1:{} in {:.1} s",
                        broker.amqp_port,
                        started.elapsed().as_secs_f64()
                    );
                    return Some(broker);
                }
                Err(exited) => {
                    let tail = log_tail(&broker.dir.join("console.log"));
                    drop(broker);
                    assert!(
                        exited,
                        "rabbitmq-server did not answer AMQP within {RABBIT_BOOT:?}; its log:\n{tail}"
                    );
                    eprintln!(
                        "rabbitmq-server exited at boot; trying other ports. Its log:\n{tail}"
                    );
                }
            }
        }
        panic!("rabbitmq-server exited at boot three times; its log is above");
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/VHOST`, the vhost percent-encoded
    /// (`/` is `%2f`).
    pub fn amqp_url(&self, vhost: &str) -> String {
        let mut encoded = String::new();
        for b in vhost.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                encoded.push(b as char);
            } else {
                encoded.push_str(&format!("%{b:02x}"));
            }
        }
        format!("amqp://guest:guest@127.0.0.1:{}/{encoded}", self.amqp_port)
    }

    pub fn amqp_port(&self) -> u16 {
        self.amqp_port
    }

    pub fn amqp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.amqp_port))
    }

    /// The Erlang node name, `soapcache-PID-N@localhost`.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn epmd_port(&self) -> u16 {
        self.epmd_port
    }

    /// A new vhost, `NAME-N` with N unique in this process (two tests that
    /// pick the same name still get a vhost each), on which guest may do
    /// everything; returns its name, for [`RabbitBroker::amqp_url`].
    pub fn new_vhost(&self, name: &str) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let vhost = format!("{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.rabbitmqctl(&["add_vhost", &vhost]);
        self.rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        vhost
    }

    /// Runs `rabbitmqctl -n NODE ARGS...` against this broker (about 0.6 s:
    /// the CLI is an Erlang node itself) and returns its standard output;
    /// panics when it fails.
    pub fn rabbitmqctl(&self, args: &[&str]) -> String {
        let mut command = Command::new(self.scripts.join("rabbitmqctl"));
        command.arg("-n").arg(&self.node).args(args);
        self.environment(&mut command);
        let output = command
            .stdin(Stdio::null())
            .output()
            .expect("run rabbitmqctl");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// Whether AMQP answers now: see [`amqp_answers`].
    pub fn answers(&self, limit: Duration) -> bool {
        amqp_answers(self.amqp_port, limit)
    }

    /// SIGKILL to the Erlang VM (and its start script), as a crash; returns
    /// once they are gone. The broker's epmd stays, as it would.
    pub fn kill9(&self) {
        let mut state = lock(&self.state);
        self.kill_vm(&mut state);
    }

    /// Stops the VM the ordinary way (SIGTERM: RabbitMQ shuts down cleanly,
    /// at most 30 s, then SIGKILL) if it runs, and starts it again with the
    /// same directories, node name and ports, so durable queues and
    /// persistent messages are still there; returns once AMQP answers.
    pub fn restart(&self) {
        let started = Instant::now();
        let mut state = lock(&self.state);
        if let Some(server) = state.server.as_mut() {
            signal("TERM", server.id().into());
            let deadline = Instant::now() + Duration::from_secs(30);
            while server.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Whatever is left (also of a VM that ignored the SIGTERM).
        self.kill_vm(&mut state);
        if let Err(exited) = self.boot(&mut state) {
            self.kill_vm(&mut state);
            panic!(
                "rabbitmq-server did not start again on port {} ({}); its log:\n{}",
                self.amqp_port,
                if exited { "it exited" } else { "no answer" },
                log_tail(&self.dir.join("console.log"))
            );
        }
        eprintln!(
            "rabbitmq-server {} restarted in {:.1} s",
            self.node,
            started.elapsed().as_secs_f64()
        );
    }

    /// Kills the VM and its epmd and removes the directory; what `Drop`
    /// does (not for the shared broker: the keeper does that at exit).
    pub fn stop(&self) {
        let mut state = lock(&self.state);
        self.kill_vm(&mut state);
        if let Some(mut epmd) = state.epmd.take() {
            let _ = epmd.kill();
            let _ = epmd.wait();
        }
        state.keeper.disarm();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Starts the VM, under the keeper, and waits until AMQP answers.
    /// `Err(true)` when it exited first, `Err(false)` at the deadline.
    fn boot(&self, state: &mut RabbitState) -> Result<(), bool> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("console.log"))
            .expect("open console.log");
        let mut command = Command::new(self.scripts.join("rabbitmq-server"));
        self.environment(&mut command);
        command
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_LOGS", "-")
            .env("RABBITMQ_PID_FILE", self.dir.join("log/rabbit.pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("plugins"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("ERL_CRASH_DUMP", self.dir.join("log/erl_crash.dump"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup console.log"))
            .stderr(log)
            .process_group(0);
        let mut server = command.spawn().expect("start rabbitmq-server");
        state.keeper.watch(server.id());
        let deadline = Instant::now() + RABBIT_BOOT;
        let outcome = loop {
            if amqp_answers(self.amqp_port, Duration::from_secs(2)) {
                break Ok(());
            }
            if server.try_wait().ok().flatten().is_some() {
                break Err(true);
            }
            if Instant::now() >= deadline {
                break Err(false);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        state.server = Some(server);
        outcome
    }

    /// What both the server and rabbitmqctl need: the user, this broker's
    /// HOME (its Erlang cookie) and epmd, no system config.
    fn environment(&self, command: &mut Command) {
        let home = self.dir.join("home");
        command
            .env("HOME", &home)
            .current_dir(&home)
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                self.dir.join("advanced.config"),
            )
            .env(
                "RABBITMQ_CTL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            );
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid).env("USER", "rabbitmq");
        }
    }

    /// SIGKILL to the start script's process group (script and VM), then
    /// reaps the script; the VM's helpers (erl_child_setup, inet_gethost)
    /// exit on their own when it is gone.
    fn kill_vm(&self, state: &mut RabbitState) {
        if let Some(mut server) = state.server.take() {
            signal("KILL", -i64::from(server.id()));
            let _ = server.wait();
            // The VM is the script's child: wait until it is gone too, so
            // that the ports are free when this returns.
            if let Some(vm) = self.vm_pid() {
                let deadline = Instant::now() + Duration::from_secs(10);
                while !process_gone(vm) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = std::fs::remove_file(self.dir.join("log/rabbit.pid"));
        }
    }

    /// The VM's pid, from its pid file, once it has written it.
    pub fn vm_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("log/rabbit.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for RabbitBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether an AMQP 0-9-1 server listens on the port: the protocol header
/// `AMQP 0 0 9 1` is answered by a method frame (type 1) on channel 0 that
/// is Connection.Start (class 10, method 10). No AMQP client needed.
pub fn amqp_answers(port: u16, limit: Duration) -> bool {
    let probe = || -> std::io::Result<bool> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = TcpStream::connect_timeout(&addr, limit)?;
        stream.set_read_timeout(Some(limit))?;
        stream.set_write_timeout(Some(limit))?;
        stream.write_all(b"AMQP\x00\x00\x09\x01")?;
        // type, channel (2), size (4), class (2), method (2)
        let mut frame = [0u8; 11];
        stream.read_exact(&mut frame)?;
        Ok(frame[0] == 1 && frame[1..3] == [0, 0] && frame[7..11] == [0, 10, 0, 10])
    };
    probe().unwrap_or(false)
}

/// Where the Debian package keeps the real scripts (`/usr/sbin/` has
/// wrappers that `su` to rabbitmq); elsewhere, the directory of the
/// `rabbitmq-server` found on PATH.
fn rabbit_scripts() -> PathBuf {
    let debian = PathBuf::from("/usr/lib/rabbitmq/bin");
    if debian.join("rabbitmq-server").is_file() {
        return debian;
    }
    find_program("rabbitmq-server")
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .expect("rabbitmq-server was found")
}

/// The layout the broker writes into, owned by the user it runs as:
/// `home/.erlang.cookie` (its own cookie, which rabbitmqctl reads through
/// the same HOME), `mnesia/`, `log/` and an empty `plugins` file.
fn prepare_rabbit_dir(dir: &Path, user: Option<(u32, u32)>) {
    let home = dir.join("home");
    for sub in [&home, &dir.join("mnesia"), &dir.join("log")] {
        std::fs::create_dir_all(sub).expect("create a broker dir");
    }
    std::fs::write(dir.join("plugins"), "[].\n").expect("write the plugins file");
    let cookie = home.join(".erlang.cookie");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let _ = std::fs::remove_file(&cookie);
    std::fs::write(
        &cookie,
        format!("SOAPCACHE{:X}{nanos:X}", std::process::id()),
    )
    .expect("write the Erlang cookie");
    // Erlang refuses a cookie file that others can read.
    std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))
        .expect("chmod the cookie");
    if let Some((uid, gid)) = user {
        for path in [
            home.clone(),
            cookie,
            dir.join("mnesia"),
            dir.join("log"),
            dir.join("plugins"),
        ] {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {} to rabbitmq: {e}", path.display()));
        }
    }
}

/// epmd on `port`, once it listens: the VM must find it there at boot, or
/// it starts an epmd of its own that nobody would stop. `None` when it
/// exited (the port was taken).
fn spawn_epmd(port: u16, user: Option<(u32, u32)>) -> Option<Child> {
    let mut command = Command::new(find_program("epmd").expect("epmd was found"));
    command
        .args(["-port", &port.to_string(), "-address", "127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    let mut epmd = command.spawn().expect("start epmd");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if epmd.try_wait().ok().flatten().is_some() {
            return None;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Some(epmd);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = epmd.kill();
    let _ = epmd.wait();
    panic!("epmd did not listen on 127.0.0.1:{port} within 10 s");
}

fn is_root() -> bool {
    // /proc/self is owned by the effective uid; no libc needed.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// uid and gid of `user`, from /etc/passwd.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && fields[0] == user)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}
