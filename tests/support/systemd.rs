//! A real systemd, booted as PID 1 of new PID and mount namespaces on a
//! throw-away overlay of the host's root, with the project's unit files and
//! freshly built binary installed. See ../shared/SYSTEMD-IN-TESTS.md.
//!
//! The host stays safe: the box writes only to its overlay and its own tmpfs
//! mounts, and is killed (SIGKILL to its PID 1) on drop, also when a test
//! panics. The network namespace is the host's, so sockets the box listens
//! on are reachable from the test directly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository's unit files, installed as they are.
pub const UNITS: [&str; 3] = ["app.socket", "app@.service", "app.target"];

const BOOT_LIMIT: Duration = Duration::from_secs(60);

/// Whether this machine can boot a box; when not, the reason.
fn boot_blocker() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["unshare", "nsenter", "/lib/systemd/systemd"] {
        let found = if tool.starts_with('/') {
            Path::new(tool).exists()
        } else {
            Command::new(tool).arg("--version").output().is_ok()
        };
        if !found {
            return Some(format!("{tool} is missing"));
        }
    }
    None
}

/// `None` (after a visible message) when the box cannot boot here and we are
/// not in CI; in CI that is a failure, never a silent pass.
pub fn can_boot(test: &str) -> bool {
    match boot_blocker() {
        None => true,
        Some(reason) => {
            super::cannot_run(test, &format!("cannot boot systemd here ({reason})"));
            false
        }
    }
}

/// The units most tests start: both instances behind the shared socket.
pub const APP_TARGET: &[&str] = &["app.target"];
/// One instance behind the socket.
pub const APP_ONE: &[&str] = &["app.socket", "app@1.service"];

/// How nearly every systemd test begins, in one place: the box can boot
/// (else `None`, after [`can_boot`]'s message for the running test, or its
/// failure under CI), boots with what `install` gives (called only then:
/// it builds the binaries) and its socket on a free loopback port, and
/// `systemctl start`s `units` (none: nothing started).
pub fn booted_now(
    install: impl FnOnce() -> Install,
    units: &[&str],
) -> Option<(std::sync::Arc<SystemdBox>, std::net::SocketAddr)> {
    if !can_boot(&running_test()) {
        return None;
    }
    Some(boot_and_start(install(), units))
}

fn boot_and_start(
    install: Install,
    units: &[&str],
) -> (std::sync::Arc<SystemdBox>, std::net::SocketAddr) {
    let (sd, addr) = SystemdBox::boot_on_free_port(install);
    if !units.is_empty() {
        let mut start = vec!["start"];
        start.extend_from_slice(units);
        sd.systemctl_ok(&start);
    }
    (sd, addr)
}

/// [`booted_now`] from an async test: the boot blocks for seconds, off the
/// runtime's threads.
pub async fn booted(
    install: impl FnOnce() -> Install + Send + 'static,
    units: &[&str],
) -> Option<(std::sync::Arc<SystemdBox>, std::net::SocketAddr)> {
    if !can_boot(&running_test()) {
        return None;
    }
    let units: Vec<String> = units.iter().map(|u| (*u).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let units: Vec<&str> = units.iter().map(String::as_str).collect();
        boot_and_start(install(), &units)
    })
    .await
    .map(Some)
    .unwrap()
}

/// The running test's name: libtest names each test's thread after it (an
/// async test's body runs on that thread too). Run one at a time, tests
/// share the main thread, and the name is not known.
fn running_test() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_owned(),
        _ => "this test".to_owned(),
    }
}

/// A duration the repository's unit file sets (`KEY=10s`); panics if it
/// does not set it.
pub fn unit_duration(unit: &str, key: &str) -> Duration {
    let path = crate::root().join("systemd").join(unit);
    let text = std::fs::read_to_string(&path).unwrap();
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
        .unwrap_or_else(|| panic!("{unit} sets no {key}="));
    handover::settings::parse_duration(value).unwrap()
}

/// A duration a unit file at `path` sets (`KEY=10s`); panics if it does
/// not set it. For rendered unit sets other than the repository's.
pub fn unit_file_duration(path: &Path, key: &str) -> Duration {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
        .unwrap_or_else(|| panic!("{} sets no {key}=", path.display()));
    handover::settings::parse_duration(value)
        .unwrap_or_else(|e| panic!("{}: {key}={value}: {e}", path.display()))
}

/// The unit files `NAME units` renders for the service `name`:
/// `NAME.socket`, `NAME@.service`, `NAME.target`.
pub fn unit_names(name: &str) -> [String; 3] {
    [
        format!("{name}.socket"),
        format!("{name}@.service"),
        format!("{name}.target"),
    ]
}

/// A booted systemd in its own namespaces.
pub struct SystemdBox {
    /// The `unshare` process; its child is the box's PID 1.
    unshare: Child,
    /// The box's PID 1 as the host sees it.
    pub pid: i32,
    /// The box's own cgroup (see `cgroup_name`), removed on drop.
    cgroup: String,
    _staging: tempfile::TempDir,
}

/// A cgroup of its own for each box. systemd takes its PID 1's cgroup as the
/// root of everything it creates; boxes booted in the host's root cgroup all
/// made `/system.slice/system-app.slice/app@1.service`, the same cgroup for
/// every box's app@1, so one box's `systemctl kill` (which kills by cgroup)
/// failed on another box's processes, invisible in its PID namespace.
fn cgroup_name() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("handover-box-{}-{n}", std::process::id())
}

/// Files to place in the box's root before it boots: (path inside, contents).
pub struct Install {
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// (path inside, host file) copied with its mode.
    pub copies: Vec<(PathBuf, PathBuf)>,
}

impl Install {
    /// The project's units, `app` at /usr/bin/app, and a settings file.
    pub fn project(settings: &str) -> Self {
        let units = crate::root().join("systemd");
        let mut copies: Vec<(PathBuf, PathBuf)> = UNITS
            .iter()
            .map(|u| (Path::new("/etc/systemd/system").join(u), units.join(u)))
            .collect();
        copies.push(("/usr/bin/app".into(), super::process::app_binary().into()));
        Self {
            files: vec![("/etc/app/app.toml".into(), settings.as_bytes().to_vec())],
            copies,
        }
    }

    /// As [`Install::project`], with another build of `app`.
    pub fn project_with_binary(settings: &str, binary: &Path) -> Self {
        let mut install = Self::project(settings);
        for (inside, host) in &mut install.copies {
            if inside == Path::new("/usr/bin/app") {
                *host = binary.to_owned();
            }
        }
        install
    }

    /// Nothing of the project: for tests that install it from a package.
    pub fn nothing() -> Self {
        Self {
            files: Vec::new(),
            copies: Vec::new(),
        }
    }

    /// Any service `name` as its rendered files lay it out: the three units
    /// from `units_dir` (the `systemd/` of `NAME units --out DIR`) in
    /// /etc/systemd/system, `binary` at /usr/bin/NAME (where the rendered
    /// `ExecStart=` runs it), and `settings` as /etc/NAME/NAME.toml.
    pub fn service(name: &str, units_dir: &Path, binary: &Path, settings: &str) -> Self {
        let mut copies: Vec<(PathBuf, PathBuf)> = unit_names(name)
            .iter()
            .map(|u| (Path::new("/etc/systemd/system").join(u), units_dir.join(u)))
            .collect();
        copies.push((Path::new("/usr/bin").join(name), binary.to_owned()));
        Self {
            files: vec![(
                PathBuf::from(format!("/etc/{name}/{name}.toml")),
                settings.as_bytes().to_vec(),
            )],
            copies,
        }
    }

    /// Everything of `self` and of `other`, in one box.
    pub fn and(mut self, other: Install) -> Self {
        self.files.extend(other.files);
        self.copies.extend(other.copies);
        self
    }

    pub fn file(mut self, path: &str, contents: &str) -> Self {
        self.files.push((path.into(), contents.as_bytes().to_vec()));
        self
    }
}

impl SystemdBox {
    pub fn boot(install: Install) -> Self {
        let staging = tempfile::tempdir().expect("a staging directory");
        // Stage everything on the host side; the boot script copies it into
        // the overlay root before pivoting into it.
        let stage = staging.path().join("root");
        for (inside, contents) in &install.files {
            let dest = stage.join(inside.strip_prefix("/").unwrap());
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::write(&dest, contents).unwrap();
        }
        for (inside, host) in &install.copies {
            let dest = stage.join(inside.strip_prefix("/").unwrap());
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(host, &dest)
                .unwrap_or_else(|e| panic!("cannot stage {}: {e}", host.display()));
        }
        std::fs::create_dir_all(stage.join("etc/systemd/system")).unwrap();
        std::fs::write(
            stage.join("etc/systemd/system/harness.target"),
            "[Unit]\nDescription=test harness\n",
        )
        .unwrap();
        let script = staging.path().join("boot.sh");
        std::fs::write(&script, BOOT_SCRIPT).unwrap();

        let cgroup = cgroup_name();
        let mut unshare = Command::new("unshare")
            .args(["--pid", "--mount", "--fork", "bash"])
            .arg(&script)
            .arg(&stage)
            .arg(&cgroup)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run unshare");
        let pid = match wait_for_child(unshare.id()) {
            Some(pid) => pid,
            None => {
                let _ = unshare.kill();
                let out = unshare.wait_with_output().unwrap();
                panic!(
                    "the box did not start: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        };
        let mut boxed = SystemdBox {
            unshare,
            pid,
            cgroup,
            _staging: staging,
        };
        boxed.wait_running();
        boxed
    }

    /// Boots `install` with app.socket moved to a free loopback port by a
    /// drop-in (the README's way of changing the address).
    pub fn boot_on_free_port(install: Install) -> (std::sync::Arc<Self>, std::net::SocketAddr) {
        Self::boot_service_on_free_port("app", install)
    }

    /// As [`SystemdBox::boot_on_free_port`], for the service `name`: the
    /// drop-in moves `NAME.socket`.
    pub fn boot_service_on_free_port(
        name: &str,
        install: Install,
    ) -> (std::sync::Arc<Self>, std::net::SocketAddr) {
        let (install, addr) = listen_on_free_port(name, install);
        (std::sync::Arc::new(Self::boot(install)), addr)
    }

    /// Waits until the box's manager has booted (`running`, or `degraded` if
    /// a unit that does not matter here failed).
    fn wait_running(&mut self) {
        let started = Instant::now();
        loop {
            let out = self.run("systemctl", &["is-system-running", "--wait"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            match state.as_str() {
                "running" => return,
                "degraded" => {
                    let failed = self.run("systemctl", &["--failed", "--no-legend", "--plain"]);
                    eprintln!(
                        "box booted degraded; failed units:\n{}",
                        String::from_utf8_lossy(&failed.stdout)
                    );
                    return;
                }
                _ if started.elapsed() > BOOT_LIMIT => {
                    panic!("the box did not boot: state {state:?}")
                }
                // `--wait` returns at once while the manager is not yet
                // listening on its bus; then we ask again.
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Runs a command inside the box.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-m", "-p", "--", program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// `systemctl ARGS` inside the box; returns the output, success or not.
    pub fn systemctl(&self, args: &[&str]) -> Output {
        self.run("systemctl", args)
    }

    /// `systemctl ARGS`, which must succeed; fails the test with its output
    /// and the journal otherwise.
    pub fn systemctl_ok(&self, args: &[&str]) -> String {
        let out = self.systemctl(args);
        if !out.status.success() {
            panic!(
                "systemctl {args:?} failed: {}\nstdout: {}\nstderr: {}\njournal:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.journal(&[])
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A unit property (`systemctl show -p NAME --value`).
    pub fn property(&self, unit: &str, name: &str) -> String {
        self.systemctl_ok(&["show", "-p", name, "--value", unit])
            .trim()
            .to_owned()
    }

    /// Follows the journal of `unit` as JSON lines, from its first entry, so a
    /// line written before journalctl opened the journal is not missed.
    pub fn follow_journal(&self, unit: &str) -> super::process::Process {
        let pid = self.pid.to_string();
        super::process::Process::spawn(
            "nsenter",
            &[
                "-t",
                &pid,
                "-m",
                "-p",
                "journalctl",
                "-f",
                "-n",
                "all",
                "-o",
                "json",
                "-u",
                unit,
            ],
            &[],
        )
    }

    /// The journal, optionally of some units (`-u app@1.service`).
    pub fn journal(&self, units: &[&str]) -> String {
        let mut args = vec!["--no-pager", "-o", "short-monotonic"];
        for unit in units {
            args.extend(["-u", unit]);
        }
        let out = self.run("journalctl", &args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The journal entries `journalctl ARGS` selects (`-t orders` for a
    /// SYSLOG_IDENTIFIER, `-u UNIT`), each a JSON object as `-o json` gives
    /// it, in the order journald received them. Everything sent to journald
    /// before the call is in (`journalctl --sync` waits for it to be written).
    pub fn journal_entries(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let sync = self.run("journalctl", &["--sync"]);
        assert!(
            sync.status.success(),
            "journalctl --sync: {}",
            String::from_utf8_lossy(&sync.stderr)
        );
        let mut all = vec!["--no-pager", "-o", "json"];
        all.extend_from_slice(args);
        let out = self.run("journalctl", &all);
        assert!(
            out.status.success(),
            "journalctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("journalctl -o json: {e}: {l}"))
            })
            .collect()
    }

    /// Writes a file inside the box (through /proc/PID/root).
    pub fn write(&self, inside: &str, contents: &str) {
        let path = self.host_path(inside);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut file = std::fs::File::create(&path)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        file.write_all(contents.as_bytes()).unwrap();
    }

    /// Copies a host file into the box, keeping its mode.
    pub fn copy_in(&self, host: &Path, inside: &str) {
        let path = self.host_path(inside);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Replace rather than overwrite: a running binary cannot be written.
        let staged = path.with_extension("new");
        std::fs::copy(host, &staged).unwrap();
        std::fs::rename(&staged, &path).unwrap();
    }

    fn host_path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(inside.trim_start_matches('/'))
    }
}

impl Drop for SystemdBox {
    fn drop(&mut self) {
        // SIGTERM only makes a system manager re-execute; SIGKILL to the
        // namespace's PID 1 ends everything inside, and the kernel unmounts.
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        // Its cgroups, deepest first, once their processes are gone. In
        // every hierarchy: systemd made the same path in each controller's.
        let started = Instant::now();
        let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|h| h.path())
            .chain([PathBuf::from("/sys/fs/cgroup")]);
        for hierarchy in hierarchies {
            let root = hierarchy.join(&self.cgroup);
            while root.exists() && started.elapsed() < Duration::from_secs(5) {
                let _ = Command::new("find")
                    .arg(&root)
                    .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                    .stderr(Stdio::null())
                    .status();
                if root.exists() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// `install` plus a drop-in moving `NAME.socket` to a free loopback port (the
/// README's way of changing the address, as `systemctl edit NAME.socket`
/// writes it); returns the port's address.
pub fn listen_on_free_port(name: &str, install: Install) -> (Install, std::net::SocketAddr) {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", super::process::free_port())
        .parse()
        .unwrap();
    let install = install.file(
        &format!("/etc/systemd/system/{name}.socket.d/listen.conf"),
        &format!("[Socket]\nListenStream=\nListenStream={addr}\n"),
    );
    (install, addr)
}

/// The host PID of `parent`'s first child, once it has exec'd systemd.
fn wait_for_child(parent: u32) -> Option<i32> {
    let started = Instant::now();
    let children = format!("/proc/{parent}/task/{parent}/children");
    while started.elapsed() < BOOT_LIMIT {
        if let Some(pid) = std::fs::read_to_string(&children)
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "systemd" {
                return Some(pid);
            }
        }
        if !Path::new(&format!("/proc/{parent}")).exists() {
            return None;
        }
        // The boot script runs for a few milliseconds before exec; there is
        // no event for "a process exec'd" short of ptrace.
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Runs inside the new namespaces as their PID 1 until it execs systemd.
/// $1 is the staged tree to copy over the box's root.
const BOOT_SCRIPT: &str = r#"
set -euo pipefail
stage="$1"
# This shell becomes the box's PID 1: into a cgroup of the box's own first,
# in the hierarchies systemd tracks processes with (hybrid: the unified one
# and name=systemd; whichever exist).
for hierarchy in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup; do
    if [ -e "$hierarchy/cgroup.procs" ]; then
        mkdir -p "$hierarchy/$2"
        echo 0 > "$hierarchy/$2/cgroup.procs"
    fi
done
mount --make-rprivate /
base=$(mktemp -d /tmp/handover-box.XXXXXX)
mount -t tmpfs -o mode=0755 box "$base"
mkdir -p "$base/upper" "$base/work" "$base/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
root="$base/root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
for dir in run tmp var/tmp; do
    mount -t tmpfs -o mode=1777 tmpfs "$root/$dir"
done
chmod 0755 "$root/run"
cp -a "$stage/." "$root/"
# A real host has no policy-rc.d; Debian's package scripts obey it.
rm -f "$root/usr/sbin/policy-rc.d"
# The host's persistent journal stays the host's.
rm -rf "$root/var/log/journal"
mkdir -p "$root/.oldroot"
cd "$root"
pivot_root . .oldroot
umount -l /.oldroot
export container=handover-test
exec /lib/systemd/systemd --system --unit=harness.target
"#;
