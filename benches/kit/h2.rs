//! `/` over HTTP/2 (h2c, prior knowledge): `app` against the bare hyper h2c
//! server (`baseline --h2`), loaded by h2load (Debian's nghttp2-client), a
//! client we did not write. As for HTTP/1.1, the runs alternate in ABBA
//! order and the figure is the median of the rounds' ratios.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{Server, abba, median, ms, wrk_duration};

pub const CONNECTIONS: u32 = 64;
/// Streams each connection keeps in flight.
pub const STREAMS: u32 = 10;
pub const SECONDS: u32 = 5;
pub const ROUNDS: usize = 4;

/// What h2load measured in one run.
#[derive(Debug, Clone, Copy)]
pub struct H2load {
    pub requests_per_sec: f64,
    pub succeeded: u64,
    /// Failed, errored and timed-out requests.
    pub failed: u64,
    pub mean: Duration,
}

#[derive(Default)]
pub struct Figures {
    pub app: Vec<H2load>,
    pub baseline: Vec<H2load>,
}

impl Figures {
    pub fn ratio(&self) -> f64 {
        median(
            &self
                .app
                .iter()
                .zip(&self.baseline)
                .map(|(a, b)| a.requests_per_sec / b.requests_per_sec)
                .collect::<Vec<_>>(),
        )
    }

    pub fn row(&self) -> String {
        let rps = |v: &[H2load]| median(&v.iter().map(|h| h.requests_per_sec).collect::<Vec<_>>());
        let mean = |v: &[H2load]| median(&v.iter().map(|h| h.mean).collect::<Vec<_>>());
        let failed = |v: &[H2load]| v.iter().map(|h| h.failed).sum::<u64>();
        format!(
            "| `/` over HTTP/2 (h2c), h2load -c{CONNECTIONS} -m{STREAMS} -D{SECONDS}, {ROUNDS} rounds (ABBA order) | app {:.0} req/s (mean {}), baseline {:.0} req/s (mean {}) (medians); median of the rounds' ratios **{:.3}×**; failed streams {}, {} | |",
            rps(&self.app),
            ms(mean(&self.app)),
            rps(&self.baseline),
            ms(mean(&self.baseline)),
            self.ratio(),
            failed(&self.app),
            failed(&self.baseline),
        )
    }
}

pub fn measure(app: &Path, baseline: &Path) -> Figures {
    let app = Server::app(app, &[]);
    let base = Server::baseline(baseline, &["--h2"]);
    // Warm both up before measuring, as for HTTP/1.1.
    h2load(base.addr, 2);
    h2load(app.addr, 2);
    let mut figures = Figures::default();
    abba(ROUNDS, |name, round| {
        let (addr, runs) = match name {
            "app" => (app.addr, &mut figures.app),
            _ => (base.addr, &mut figures.baseline),
        };
        let h = h2load(addr, SECONDS);
        println!(
            "{:>10}: {:>9.0} req/s  mean {:>9}  succeeded {}  failed {}",
            format!("{name} {round}"),
            h.requests_per_sec,
            ms(h.mean),
            h.succeeded,
            h.failed
        );
        runs.push(h);
    });
    println!(
        "app / baseline, median of the rounds: {:.3}×",
        figures.ratio()
    );
    figures
}

fn h2load(addr: SocketAddr, seconds: u32) -> H2load {
    let out = Command::new("h2load")
        .args([
            &format!("-c{CONNECTIONS}"),
            &format!("-m{STREAMS}"),
            &format!("-D{seconds}"),
            &format!("http://{addr}/"),
        ])
        .output()
        .expect("run h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    parse(&text).unwrap_or_else(|e| panic!("cannot read h2load's output ({e}):\n{text}"))
}

/// "finished in 5.00s, 65133.33 req/s, 3.42MB/s", "requests: 325667 total,
/// 326307 started, 325667 done, 325667 succeeded, 0 failed, 0 errored, 0
/// timeout", "time for request: 46us 25.76ms 7.22ms 3.40ms 71.16%" (min,
/// max, mean, sd).
fn parse(text: &str) -> Result<H2load, String> {
    let after = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let requests_per_sec = after("finished in")
        .and_then(|rest| rest.split(',').nth(1))
        .and_then(|rate| rate.trim().strip_suffix(" req/s"))
        .ok_or("no req/s")?
        .parse()
        .map_err(|e| format!("req/s: {e}"))?;
    let requests = after("requests:").ok_or("no requests: line")?;
    let count = |what: &str| -> Result<u64, String> {
        requests
            .split(',')
            .find_map(|part| part.trim().strip_suffix(what))
            .ok_or(format!("no {what:?} count"))?
            .trim()
            .parse()
            .map_err(|e| format!("{what}: {e}"))
    };
    let mean = after("time for request:")
        .and_then(|rest| rest.split_whitespace().nth(2))
        .ok_or("no time for request")?;
    Ok(H2load {
        requests_per_sec,
        succeeded: count("succeeded")?,
        failed: count("failed")? + count("errored")? + count("timeout")?,
        mean: wrk_duration(mean)?,
    })
}
