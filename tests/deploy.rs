//! Acceptance tests under a real systemd booted by the harness, with the real
//! unit files, the freshly built binary and real load over loopback.

mod support;

use support::process::free_port;
use support::systemd::{Install, SystemdBox, can_boot};

/// Boots a box with the project's units, the socket moved to a free port by a
/// drop-in (the README's way of changing the address), and returns its address.
fn boot(settings: &str) -> (SystemdBox, std::net::SocketAddr) {
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let install = Install::project(settings).file(
        "/etc/systemd/system/app.socket.d/listen.conf",
        &format!("[Socket]\nListenStream=\nListenStream={addr}\n"),
    );
    (SystemdBox::boot(install), addr)
}

#[test]
fn smoke_two_instances_serve_the_socket() {
    if !can_boot("smoke_two_instances_serve_the_socket") {
        return;
    }
    let (sd, addr) = boot("");
    sd.systemctl_ok(&["start", "app.target"]);
    for unit in ["app@1.service", "app@2.service"] {
        assert_eq!(sd.property(unit, "ActiveState"), "active");
    }
    let (status, body) = support::process::http_get(addr, "/version").unwrap();
    assert_eq!(status, 200, "{body}");
    println!("{body}");
    println!("{}", sd.journal(&["app@1.service"]));
}
