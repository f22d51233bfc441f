//! The harness for tests against real servers (tests/support/servers.rs)
//! does what the Redis and RabbitMQ tests will rely on: servers on loopback
//! that start, crash, pause and restart on demand, and that never outlive
//! the test process.
mod support;

use std::io::ErrorKind;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::servers::{amqp_answers, process_gone, require, RabbitBroker, RedisServer};

#[test]
fn redis_crashes_pauses_and_restarts_on_its_port() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    redis.ping(Duration::from_secs(2)).expect("PONG");

    redis.kill9();
    let refused = redis.ping(Duration::from_secs(2)).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");

    redis.restart();
    assert_eq!(redis.port(), port);
    redis
        .ping(Duration::from_secs(2))
        .expect("PONG after restart");

    // Stopped, it still accepts (the kernel does) but answers nothing.
    redis.pause();
    let limit = Duration::from_millis(300);
    let started = Instant::now();
    let silent = redis.ping(limit).unwrap_err();
    assert!(
        matches!(silent.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{silent}"
    );
    assert!(started.elapsed() < limit * 4, "{:?}", started.elapsed());
    redis.resume();
    redis
        .ping(Duration::from_secs(2))
        .expect("PONG after resume");

    let pid = redis.pid().expect("running");
    drop(redis);
    assert!(process_gone(pid), "redis-server {pid} outlived its drop");
}

#[test]
fn the_shared_broker_answers_amqp_and_makes_vhosts() {
    let Some(broker) = RabbitBroker::shared() else {
        return;
    };
    assert!(broker.answers(Duration::from_secs(2)));
    let port = broker.amqp_port();
    assert_eq!(
        broker.amqp_url("/"),
        format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
    );

    let vhost = broker.new_vhost("servers test");
    assert!(vhost.starts_with("servers test-"), "{vhost}");
    assert_eq!(
        broker.amqp_url(&vhost),
        format!(
            "amqp://guest:guest@127.0.0.1:{port}/servers%20test-{}",
            &vhost["servers test-".len()..]
        )
    );
    let vhosts = broker.rabbitmqctl(&["list_vhosts", "--quiet", "--no-table-headers"]);
    assert!(vhosts.lines().any(|l| l == vhost), "{vhosts}");
    let permissions = broker.rabbitmqctl(&[
        "list_permissions",
        "-p",
        &vhost,
        "--quiet",
        "--no-table-headers",
    ]);
    assert!(
        permissions
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["guest", ".*", ".*", ".*"]),
        "{permissions}"
    );
}

#[test]
fn an_own_broker_survives_a_restart_and_a_crash() {
    let Some(broker) = RabbitBroker::start() else {
        return;
    };
    let port = broker.amqp_port();
    assert!(broker.answers(Duration::from_secs(2)));
    // A vhost lives in the broker's data dir, as durable queues do.
    let vhost = broker.new_vhost("kept");
    let has_vhost = || {
        broker
            .rabbitmqctl(&["list_vhosts", "--quiet", "--no-table-headers"])
            .lines()
            .any(|l| l == vhost)
    };

    broker.restart();
    assert_eq!(broker.amqp_port(), port);
    assert!(broker.answers(Duration::from_secs(2)));
    assert!(has_vhost(), "the vhost survives a restart");

    broker.kill9();
    assert!(!amqp_answers(port, Duration::from_secs(1)));
    broker.restart();
    assert!(broker.answers(Duration::from_secs(2)));
    assert!(has_vhost(), "the vhost survives a crash");
}

/// The shared broker is a static, never dropped: the keeper must kill it
/// when the process dies, here by `abort()`, which skips every destructor
/// (a panic ending the test binary is the gentler case of the same).
#[test]
fn an_abandoned_broker_dies_with_its_process() {
    if !require("rabbitmq-server", "rabbitmq-server") {
        return;
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["abandon_the_shared_broker", "--exact", "--ignored"])
        .args(["--nocapture", "--test-threads", "1"])
        .env("SOAPCACHE_ABANDON_BROKER", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "it aborted:\n{stdout}");
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("abandoned: ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("the child said what it started:\n{stdout}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (node, vm, amqp, epmd) = (
        fields[0],
        fields[1].parse::<u32>().unwrap(),
        fields[2].parse::<u16>().unwrap(),
        fields[3].parse::<u16>().unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(process_gone(vm) && !listening(amqp) && !listening(epmd)) {
        assert!(
            Instant::now() < deadline,
            "broker {node} (VM {vm}, AMQP {amqp}, epmd {epmd}) outlived its process"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run only by [`an_abandoned_broker_dies_with_its_process`].
#[test]
#[ignore = "aborts the process: run by an_abandoned_broker_dies_with_its_process"]
fn abandon_the_shared_broker() {
    if std::env::var_os("SOAPCACHE_ABANDON_BROKER").is_none() {
        return;
    }
    let broker = RabbitBroker::shared().expect("rabbitmq-server is installed");
    println!(
        "abandoned: {} {} {} {}",
        broker.node(),
        broker.vm_pid().expect("the VM wrote its pid file"),
        broker.amqp_port(),
        broker.epmd_port()
    );
    std::process::abort();
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Without the server: a skip outside CI, a failure under CI=true.
#[test]
fn a_missing_server_skips_or_fails_under_ci() {
    let outcome = std::panic::catch_unwind(|| require("soapcache-no-such-server", "none"));
    if std::env::var("CI").as_deref() == Ok("true") {
        assert!(outcome.is_err(), "CI=true: a missing server fails the test");
    } else {
        assert!(!outcome.expect("no panic outside CI"), "skipped");
    }
}
