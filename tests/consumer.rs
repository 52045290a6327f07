//! The third-party consumer: examples/orders, an axum service named `orders`
//! with a setting of its own, built on the kit's public API alone. Under a
//! booted systemd, its own rendered units and its own verbs deploy it the
//! way the kit deploys `app`: ten rollouts under load lose nothing, its
//! journal lines carry its name, and its `.deb` installs, upgrades as a
//! rolling in-place reload under load, and removes and purges cleanly.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::consumer::{NAME, crate_dir, orders_binary};
use support::load::Load;
use support::packages::{
    assert_clean, assert_nothing_left, boot_service_with_packages, consumer_debs, run_step,
};
use support::process::{http_get, http_get_within};
use support::service::{ASK_WITHIN, ask_each_instance, assert_no_loss, blocking};
use support::systemd::{Install, SystemdBox, can_boot};

/// Each client starts a request at most this often.
const PACE: Duration = Duration::from_millis(50);
/// Half the deploy tests' 200 clients, to keep this 2-core machine's run
/// short: half keep-alive, half a new connection per request.
const KEEP_ALIVE_CLIENTS: usize = 50;
const NEW_CONN_CLIENTS: usize = 50;
/// The path the load asks for: a route of the consumer's own, answered
/// with its own setting.
const LOAD_PATH: &str = "/orders/7";

/// One booted box under load at a time: the two tests here would otherwise
/// share this machine's two cores, each slowing the other's instances.
static ONE_BOX_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One answer of `GET /orders/7`.
#[derive(Debug)]
struct Order {
    id: u64,
    total: String,
    instance: String,
}

/// `/orders/7` as each default instance answers it, by instance.
fn orders_by_instance(sd: &SystemdBox, addr: SocketAddr) -> BTreeMap<String, Order> {
    ask_each_instance(sd, NAME, 2, || {
        let (status, body) = http_get_within(addr, LOAD_PATH, ASK_WITHIN)?;
        assert_eq!(status, 200, "{LOAD_PATH}: {body}");
        let v: serde_json::Value = serde_json::from_str(body.trim())
            .unwrap_or_else(|e| panic!("{LOAD_PATH} is not JSON ({e}): {body}"));
        let order = Order {
            id: v["id"].as_u64().unwrap_or_else(|| panic!("no id: {body}")),
            total: v["total"].as_str().unwrap_or_default().to_owned(),
            instance: v["instance"].as_str().unwrap_or_default().to_owned(),
        };
        Ok((order.instance.clone(), order))
    })
    .into_iter()
    .collect()
}

/// Both instances answer the consumer's route with its setting applied.
fn assert_orders_served(sd: &SystemdBox, addr: SocketAddr, currency: &str) {
    let seen = orders_by_instance(sd, addr);
    let instances: Vec<&str> = seen.keys().map(String::as_str).collect();
    assert_eq!(instances, ["1", "2"], "{addr}: {seen:?}");
    for order in seen.values() {
        assert_eq!(order.id, 7, "{order:?}");
        assert_eq!(order.total, format!("7.00 {currency}"), "{order:?}");
    }
    let (status, body) = http_get(addr, "/").unwrap();
    assert_eq!((status, body.as_str()), (200, "orders\n"));
}

/// The main PIDs of orders@1 and orders@2.
fn pids(sd: &SystemdBox) -> [String; 2] {
    [1, 2].map(|i| {
        let unit = format!("{NAME}@{i}.service");
        let pid = sd.property(&unit, "MainPID");
        assert_ne!(pid, "0", "{unit} is not running:\n{}", sd.journal(&[&unit]));
        pid
    })
}

/// `ARGS` inside the box: (success, stdout and stderr).
fn run(sd: &SystemdBox, program: &str, args: &[&str]) -> (bool, String) {
    let out = sd.run(program, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The output shows a rolling reload of both instances: orders@1 replaced
/// and ready before orders@2 was touched, then orders@2, then done.
fn assert_rolled_one_at_a_time(output: &str) {
    let steps = [
        format!("rollout: reload {NAME}@1.service (pid "),
        format!("rollout: {NAME}@1.service ready in "),
        format!("rollout: reload {NAME}@2.service (pid "),
        format!("rollout: {NAME}@2.service ready in "),
        "rollout: done, 2 instances".to_owned(),
    ];
    let mut from = 0;
    for step in &steps {
        match output[from..].find(step.as_str()) {
            Some(at) => from += at + step.len(),
            None => panic!("no {step:?} (in this order) in the rollout's output:\n{output}"),
        }
    }
}

/// From the instances' own journal lines (`journalctl -t orders`, in the
/// order journald received them): once an instance is up, some instance
/// always accepts. A process accepts from before its "ready" line until
/// after its "drain started" line (a stop), or its line saying its
/// successor serves (an in-place reload), so counting it from the one to
/// the other errs towards finding a gap. (Zero errors under load alone would not show
/// one: connections wait in the socket's queue while no instance accepts.)
/// Returns how many drains were checked.
fn assert_one_always_accepting(entries: &[serde_json::Value], phase: &str) -> usize {
    let mut accepting: BTreeSet<String> = BTreeSet::new();
    let mut drains = 0;
    for entry in entries {
        let pid = entry["_PID"].as_str().unwrap_or("?").to_owned();
        let unit = entry["_SYSTEMD_UNIT"].as_str().unwrap_or("?");
        if entry["MESSAGE"] == "ready" {
            accepting.insert(pid);
        } else if entry["MESSAGE"]
            .as_str()
            .is_some_and(|m| m.starts_with("drain started"))
            || entry["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.starts_with("reload: the new process serves"))
        {
            assert!(
                accepting.remove(&pid),
                "{phase}: {unit} (pid {pid}) drained unstarted"
            );
            drains += 1;
            assert!(
                !accepting.is_empty(),
                "{phase}: {unit} (pid {pid}) stopped accepting while no other instance did"
            );
        }
    }
    drains
}

/// Ten `orders rollout`s under load: nothing lost, both instances replaced
/// in place by new processes after each (the consumer gets the kit's
/// in-place reload without a line of its own), and the journal lines under
/// the consumer's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_rolls_out_ten_times_under_load_and_logs_as_orders() {
    let test = "orders_rolls_out_ten_times_under_load_and_logs_as_orders";
    if !can_boot(test) {
        return;
    }
    let binary = tokio::task::spawn_blocking(orders_binary).await.unwrap();
    let _one_box = ONE_BOX_AT_A_TIME.lock().await;
    let started = Instant::now();
    let install = Install::service(
        NAME,
        &crate_dir().join("systemd"),
        binary,
        "[orders]\ncurrency = \"USD\"\n",
    );
    let (sd, addr) = SystemdBox::boot_service_on_free_port(NAME, install);
    blocking(&sd, |sd| {
        sd.systemctl_ok(&["start", "orders.socket", "orders.target"])
    })
    .await;
    // Its own setting, from its own section of its own settings file.
    blocking(&sd, move |sd| assert_orders_served(sd, addr, "USD")).await;
    let mut before = blocking(&sd, pids).await;

    let load = Load::start(addr, LOAD_PATH, KEEP_ALIVE_CLIENTS, NEW_CONN_CLIENTS, PACE);
    let rollouts_started = Instant::now();
    for round in 1..=10 {
        let (ok, output) = blocking(&sd, |sd| run(sd, "/usr/bin/orders", &["rollout"])).await;
        assert!(ok, "rollout {round} failed:\n{output}");
        if round == 1 {
            print!("{output}");
        }
        assert_rolled_one_at_a_time(&output);
        let after = blocking(&sd, pids).await;
        for (i, (old, new)) in before.iter().zip(&after).enumerate() {
            assert_ne!(old, new, "rollout {round}: {NAME}@{} kept pid {old}", i + 1);
        }
        before = after;
    }
    let rollouts_took = rollouts_started.elapsed();
    let mut during = load.stop().await;
    println!("10 rollouts of orders took {rollouts_took:?}");
    assert_no_loss("orders, during 10 rollouts", &mut during);
    blocking(&sd, move |sd| assert_orders_served(sd, addr, "USD")).await;

    // Its journal lines carry its name: `journalctl -t orders` finds every
    // instance's start (one at boot, one per rollout), `-t app` nothing.
    let (ours, apps, from_orders) = blocking(&sd, |sd| {
        (
            sd.journal_entries(&["-t", NAME]),
            sd.journal_entries(&["-t", "app"]),
            sd.journal_entries(&["_COMM=orders"]),
        )
    })
    .await;
    let drains = assert_one_always_accepting(&ours, "10 rollouts");
    assert_eq!(drains, 20, "a handover per instance per rollout");
    let mut ready: BTreeMap<String, usize> = BTreeMap::new();
    for entry in &ours {
        if entry["MESSAGE"] == "ready" {
            let unit = entry["_SYSTEMD_UNIT"].as_str().unwrap_or("?").to_owned();
            *ready.entry(unit).or_default() += 1;
        }
    }
    let expected: BTreeMap<String, usize> = [
        (format!("{NAME}@1.service"), 11),
        (format!("{NAME}@2.service"), 11),
    ]
    .into();
    assert_eq!(
        ready,
        expected,
        "\"ready\" lines under SYSLOG_IDENTIFIER={NAME}, by unit:\n{}",
        sd.journal(&[])
    );
    assert!(
        apps.is_empty(),
        "journal lines tagged app: {:?}",
        apps.iter().map(|e| &e["MESSAGE"]).collect::<Vec<_>>()
    );
    // Nothing an orders process wrote to the journal is tagged otherwise.
    let foreign: Vec<String> = from_orders
        .iter()
        .filter(|e| e["SYSLOG_IDENTIFIER"] != NAME)
        .map(|e| format!("{}: {}", e["SYSLOG_IDENTIFIER"], e["MESSAGE"]))
        .collect();
    assert!(
        from_orders.len() >= 22 && foreign.is_empty(),
        "{} lines from orders processes, tagged otherwise: {foreign:?}",
        from_orders.len()
    );
    println!(
        "journal: {} lines tagged orders ({ready:?} \"ready\"), none tagged app; test took {:?}",
        ours.len(),
        started.elapsed()
    );
}

/// What /proc says the process runs: `/usr/bin/orders`, or `/usr/bin/orders
/// (deleted)` once a package replaced the file under it.
fn exe(sd: &SystemdBox, pid: &str) -> String {
    let out = sd.run("readlink", &[&format!("/proc/{pid}/exe")]);
    assert!(out.status.success(), "readlink /proc/{pid}/exe: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The installed version of the package, or `None` when it is not installed.
fn installed_version(sd: &SystemdBox) -> Option<String> {
    let out = sd.run(
        "dpkg-query",
        &[
            "--show",
            "--showformat=${db:Status-Status} ${Version}",
            NAME,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.strip_prefix("installed ").map(str::to_owned)
}

fn exists(sd: &SystemdBox, path: &str) -> bool {
    sd.run("test", &["-e", path]).status.success()
}

/// The consumer's `.deb`: installed, it serves from two instances; upgraded
/// under load, it reloads them one at a time onto the new file, losing
/// nothing; removed, nothing runs; purged, nothing of it is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_deb_installs_upgrades_as_a_rolling_reload_and_purges() {
    let test = "orders_deb_installs_upgrades_as_a_rolling_reload_and_purges";
    if !can_boot(test) {
        return;
    }
    let Some(debs) = tokio::task::spawn_blocking(move || consumer_debs(test))
        .await
        .unwrap()
    else {
        return;
    };
    let _one_box = ONE_BOX_AT_A_TIME.lock().await;
    let started = Instant::now();
    let (sd, addr, files) =
        boot_service_with_packages(debs.name, &[&debs.first.deb, &debs.second.deb]);
    let (first, second) = (files[0].clone(), files[1].clone());

    // Install: enabled, started, both instances serving its default setting.
    let step = blocking(&sd, move |sd| run_step(sd, "dpkg", &["-i", &first])).await;
    assert_clean("install", &step, &sd);
    assert_eq!(
        installed_version(&sd).as_deref(),
        Some(debs.first.version.as_str())
    );
    for unit in ["orders.socket", "orders.target"] {
        assert_eq!(sd.property(unit, "UnitFileState"), "enabled", "{unit}");
        assert_eq!(sd.property(unit, "ActiveState"), "active", "{unit}");
    }
    blocking(&sd, move |sd| assert_orders_served(sd, addr, "EUR")).await;
    let before = blocking(&sd, pids).await;
    let socket_before = sd.property("orders.socket", "InvocationID");

    // Upgrade under load: `orders rollout --if-running` from postinst.
    let load = Load::start(addr, LOAD_PATH, KEEP_ALIVE_CLIENTS, NEW_CONN_CLIENTS, PACE);
    let upgrade_started = Instant::now();
    let step = blocking(&sd, move |sd| run_step(sd, "dpkg", &["-i", &second])).await;
    let upgrade_took = upgrade_started.elapsed();
    let mut during = load.stop().await;
    assert_clean("upgrade", &step, &sd);
    println!("upgrade took {upgrade_took:?}");
    assert_rolled_one_at_a_time(&step.stdout);
    assert_no_loss("orders, during the package upgrade", &mut during);
    assert_eq!(
        installed_version(&sd).as_deref(),
        Some(debs.second.version.as_str())
    );
    let after = blocking(&sd, pids).await;
    for (i, (old, new)) in before.iter().zip(&after).enumerate() {
        assert_ne!(old, new, "{NAME}@{} was not replaced", i + 1);
        // The new process runs the file the upgrade installed, not the
        // replaced one (which /proc shows as deleted).
        assert_eq!(exe(&sd, new), "/usr/bin/orders", "{NAME}@{}", i + 1);
    }
    assert_eq!(
        sd.property("orders.socket", "InvocationID"),
        socket_before,
        "the upgrade restarted orders.socket"
    );
    let entries = blocking(&sd, |sd| sd.journal_entries(&["-t", NAME])).await;
    let drains = assert_one_always_accepting(&entries, "install and upgrade");
    assert_eq!(drains, 2, "a drain per instance at the upgrade");
    blocking(&sd, move |sd| assert_orders_served(sd, addr, "EUR")).await;

    // Remove: everything stops, each instance draining; the settings file,
    // a conffile, stays until purge.
    let step = blocking(&sd, |sd| run_step(sd, "dpkg", &["--remove", NAME])).await;
    assert_clean("remove", &step, &sd);
    assert_nothing_left(&sd, NAME, addr, "after remove");
    assert!(
        exists(&sd, "/etc/orders/orders.toml"),
        "remove took the conffile"
    );
    assert!(
        !exists(&sd, "/usr/bin/orders"),
        "remove left /usr/bin/orders"
    );
    let entries = blocking(&sd, |sd| sd.journal_entries(&["-t", NAME])).await;
    let count = |message: &str| {
        entries
            .iter()
            .filter(|e| {
                e["MESSAGE"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            })
            .filter_map(|e| e["_SYSTEMD_UNIT"].as_str())
            .collect::<Vec<_>>()
    };
    let (handed, drained) = (count("reload: handover finished"), count("drain finished"));
    // Each instance hands over once at the upgrade (an in-place reload) and
    // drains once at the removal.
    assert_eq!(
        (handed.len(), drained.len()),
        (2, 2),
        "each instance hands over on upgrade and drains cleanly on removal: \
         {handed:?} {drained:?}\n{}",
        sd.journal(&[])
    );

    // Purge: no file, unit, enablement link or configuration is left. The
    // administrator's own drop-in (orders.socket.d) is theirs.
    let step = blocking(&sd, |sd| run_step(sd, "dpkg", &["--purge", NAME])).await;
    assert_clean("purge", &step, &sd);
    assert_nothing_left(&sd, NAME, addr, "after purge");
    assert_eq!(installed_version(&sd), None);
    let out = sd.systemctl(&["list-unit-files", "--plain", "--no-legend", "orders*"]);
    let unit_files = String::from_utf8_lossy(&out.stdout);
    assert!(
        unit_files.trim().is_empty(),
        "unit files left:\n{unit_files}"
    );
    let owned = [
        "/etc/orders",
        "/usr/bin/orders",
        "/usr/lib/systemd/system/orders.socket",
        "/usr/lib/systemd/system/orders@.service",
        "/usr/lib/systemd/system/orders.target",
        "/usr/share/doc/orders",
        "/usr/share/man/man1/orders.1.gz",
        "/usr/share/man/man1/orders-rollout.1.gz",
        "/usr/share/man/man1/orders-replace.1.gz",
        "/usr/share/man/man1/orders-rotation.1.gz",
        "/usr/share/man/man1/orders-units.1.gz",
        "/usr/share/lintian/overrides/orders",
    ];
    let left: Vec<&str> = owned.into_iter().filter(|p| exists(&sd, p)).collect();
    assert!(left.is_empty(), "package files left: {left:?}");
    let find = sd.run(
        "find",
        &[
            "/etc/systemd/system",
            "/var/lib/systemd",
            "(",
            "-name",
            "orders.socket*",
            "-o",
            "-name",
            "orders.target*",
            "-o",
            "-name",
            "orders@*",
            ")",
            "-not",
            "-name",
            "orders.socket.d",
            "-not",
            "-path",
            "*/orders.socket.d/*",
        ],
    );
    let links = String::from_utf8_lossy(&find.stdout);
    assert!(links.trim().is_empty(), "left behind:\n{links}");
    println!(
        "install, upgrade, remove, purge took {:?}",
        started.elapsed()
    );
}

/// axum's own WebSocket, under the kit, in the consumer's binary: it
/// upgrades, echoes, and when the process drains (SIGTERM) the client gets
/// the kit's Close (1001) and a clean end, and the process exits 0.
#[tokio::test]
async fn an_axum_websocket_is_served_and_closed_by_the_drain() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let binary = orders_binary().to_str().unwrap().to_owned();
    let port = support::process::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut orders = support::process::Process::spawn(&binary, &["--listen", &listen], &[]);
    orders.wait_for_line(&["ready"]);
    let (mut socket, response) = tokio_tungstenite::connect_async(format!("ws://{listen}/updates"))
        .await
        .expect("the WebSocket handshake");
    assert_eq!(response.status(), 101);
    socket.send(Message::text("order 7 paid")).await.unwrap();
    let echo = socket.next().await.unwrap().unwrap();
    assert_eq!(echo, Message::text("order 7 paid"));

    orders.signal(libc::SIGTERM);
    let close = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("a Close from the drain");
    match close {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("not a Close with a code: {other:?}"),
    }
    let rest = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("the WebSocket ends");
    assert!(rest.is_none(), "{rest:?}");
    orders.expect_exit(0);
}
