//! Load balancers in front of booted hosts: Debian's nginx and HAProxy, run
//! by the test in the host's network namespace with the project's example
//! configurations (packaging/examples), rewritten only where a test must:
//! the hosts' addresses and the port to listen on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{EVENT_LIMIT, free_port};

pub fn example(name: &str) -> PathBuf {
    crate::root().join("packaging/examples").join(name)
}

/// Whether `program` runs here; when not, the reason (after the CI-aware skip).
pub fn available(test: &str, program: &str, version_flag: &str) -> bool {
    let found = Command::new(program)
        .arg(version_flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        super::cannot_run(
            test,
            &format!("{program} is not installed (.ci/run installs it)"),
        );
    }
    found
}

/// The example's lines with every `server <placeholder> …` line replaced by
/// one line per host (keeping the first one's parameters; `{name}` numbers
/// them) and `listen`/`bind` pointed at `front`. Panics if the example no
/// longer has the shape this relies on, so a changed example is noticed.
fn rewrite(example: &str, hosts: &[SocketAddr], front: SocketAddr, bind: &str) -> String {
    let mut out = String::new();
    let mut servers_done = false;
    let mut bound = false;
    for line in example.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with("server ") && trimmed.contains("192.0.2.") {
            if !servers_done {
                let words: Vec<&str> = trimmed.split_whitespace().collect();
                // nginx: server ADDR PARAMS;  HAProxy: server NAME ADDR PARAMS
                let addr_at = words.iter().position(|w| w.contains("192.0.2.")).unwrap();
                for (i, host) in hosts.iter().enumerate() {
                    let mut words = words.clone();
                    let name = format!("host{}", i + 1);
                    let addr = if words[addr_at].ends_with(';') {
                        format!("{host};")
                    } else {
                        host.to_string()
                    };
                    if addr_at == 2 {
                        words[1] = &name;
                    }
                    words[addr_at] = &addr;
                    out.push_str(&format!("{indent}{}\n", words.join(" ")));
                }
                servers_done = true;
            }
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix(&format!("{bind} ")) {
            let end = if rest.ends_with(';') { ";" } else { "" };
            out.push_str(&format!("{indent}{bind} {front}{end}\n"));
            bound = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(
        servers_done && bound,
        "the example changed shape:\n{example}"
    );
    out
}

/// Waits until something accepts connections on `addr`: the balancer is up.
fn wait_listening(addr: SocketAddr, child: &mut Child, what: &str, log: &Path) {
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < EVENT_LIMIT,
            "{what} did not listen on {addr}"
        );
        // A socket state to reach, with no event to wait on from outside.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nginx in the foreground, with `packaging/examples/nginx.conf` in its http
/// block and an access log of where each request went.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// One line of the access log: the status the client got, and each upstream
/// nginx tried for it (more than one: nginx retried it on the next host).
#[derive(Debug, Clone)]
pub struct Proxied {
    pub status: u16,
    pub upstreams: Vec<String>,
}

impl Nginx {
    pub fn start(hosts: &[SocketAddr]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let example = std::fs::read_to_string(example("nginx.conf")).unwrap();
        let app_conf = dir.path().join("app.conf");
        std::fs::write(&app_conf, rewrite(&example, hosts, addr, "listen")).unwrap();
        let d = dir.path().display();
        // Everything nginx writes goes to the temporary directory; workers
        // run as root so they may write there too.
        let main = format!(
            "user root;\n\
             worker_processes 2;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
               log_format routed '$status \"$upstream_addr\"';\n\
               access_log {d}/access.log routed;\n\
               client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               include {};\n\
             }}\n",
            app_conf.display()
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, main).unwrap();
        let error_log = dir.path().join("error.log");
        let mut child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&error_log)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run nginx");
        wait_listening(addr, &mut child, "nginx", &error_log);
        Nginx { child, addr, dir }
    }

    /// Every request nginx has logged so far.
    pub fn access_log(&self) -> Vec<Proxied> {
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines()
            .map(|line| {
                // 200 "127.0.0.1:1, 127.0.0.1:2"
                let (status, upstreams) = line.split_once(' ').unwrap();
                Proxied {
                    status: status.parse().unwrap(),
                    upstreams: upstreams
                        .trim_matches('"')
                        .split(", ")
                        .filter(|s| !s.is_empty() && *s != "-")
                        .map(str::to_owned)
                        .collect(),
                }
            })
            .collect()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: nginx's fast shutdown, workers included.
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// What a run through a balancer did, from its access log.
#[derive(Debug, Default)]
pub struct Routing {
    /// Requests each host answered (the last upstream tried).
    pub answered_by: std::collections::BTreeMap<String, u64>,
    /// Requests the balancer tried on a second host.
    pub retried: u64,
    /// Requests that got a non-2xx answer from the balancer.
    pub failed: u64,
}

impl Routing {
    pub fn of(log: &[Proxied]) -> Self {
        let mut routing = Routing::default();
        for entry in log {
            if let Some(last) = entry.upstreams.last() {
                *routing.answered_by.entry(last.clone()).or_default() += 1;
            }
            if entry.upstreams.len() > 1 {
                routing.retried += 1;
            }
            if !(200..300).contains(&entry.status) {
                routing.failed += 1;
            }
        }
        routing
    }
}

/// HAProxy in the foreground with `packaging/examples/haproxy.cfg`, and an
/// admin socket to read what it thinks of each host.
pub struct Haproxy {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// One host as HAProxy's `show stat` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    /// `UP`, `DOWN`, `UP 1/2` (going down), `DOWN 1/2` (coming up), `MAINT`.
    pub status: String,
    /// Requests HAProxy has sent it (`stot`); health checks not included.
    pub requests: u64,
}

impl Haproxy {
    pub fn start(hosts: &[SocketAddr]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let example = std::fs::read_to_string(example("haproxy.cfg")).unwrap();
        // The example is the backend a user adds to Debian's file, whose
        // global section we replace with one of our own.
        let config = format!(
            "global\n    stats socket {}/admin.sock level admin\n\n{}",
            dir.path().display(),
            rewrite(&example, hosts, addr, "bind")
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let log = dir.path().join("haproxy.log");
        let mut child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("haproxy.err")).unwrap())
            .spawn()
            .expect("run haproxy");
        wait_listening(addr, &mut child, "haproxy", &dir.path().join("haproxy.err"));
        Haproxy { child, addr, dir }
    }

    /// `show stat` for each server of the backend, by name (host1, host2, …).
    pub fn servers(&self) -> std::collections::BTreeMap<String, ServerStat> {
        use std::io::{Read, Write};
        let mut admin =
            std::os::unix::net::UnixStream::connect(self.dir.path().join("admin.sock")).unwrap();
        admin.write_all(b"show stat\n").unwrap();
        let mut csv = String::new();
        admin.read_to_string(&mut csv).unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let (svname, status, stot) = (column("svname"), column("status"), column("stot"));
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > stot && f[svname].starts_with("host"))
            .map(|f| {
                (
                    f[svname].to_owned(),
                    ServerStat {
                        status: f[status].to_owned(),
                        requests: f[stot].parse().unwrap_or(0),
                    },
                )
            })
            .collect()
    }

    /// Waits until HAProxy reports `server`'s status as `status`.
    pub fn wait_status(&self, server: &str, status: &str) -> ServerStat {
        let started = Instant::now();
        loop {
            let stat = self.servers()[server].clone();
            if stat.status == status {
                return stat;
            }
            assert!(
                started.elapsed() < EVENT_LIMIT,
                "{server} is {stat:?}, not {status}"
            );
            // HAProxy's own checks run once a second; nothing to wait on
            // but their outcome.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
