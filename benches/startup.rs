//! Start-up cost of the built `app`: time from exec to `READY=1`, and
//! resident memory once ready and idle. Run with `cargo bench --bench startup`.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STARTS: usize = 20;

fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let mut ready_times = Vec::with_capacity(STARTS);
    let mut rss_kib = Vec::with_capacity(STARTS);
    for _ in 0..STARTS {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_app"))
            .args(["--listen", "127.0.0.1:0", "--log-level", "warn"])
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .spawn()
            .expect("start app");
        let mut buf = [0u8; 512];
        loop {
            let n = notify.recv(&mut buf).expect("READY=1 within 10 s");
            if buf[..n].starts_with(b"READY=1") {
                break;
            }
        }
        ready_times.push(started.elapsed());
        rss_kib.push(rss(child.id()));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().expect("app exits");
    }
    ready_times.sort();
    rss_kib.sort();
    let median = ready_times[STARTS / 2];
    println!(
        "exec -> READY=1 over {STARTS} starts: median {median:?}, min {:?}, max {:?}",
        ready_times[0],
        ready_times[STARTS - 1]
    );
    println!(
        "RSS once ready, idle: median {} KiB, max {} KiB",
        rss_kib[STARTS / 2],
        rss_kib[STARTS - 1]
    );
}

fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
