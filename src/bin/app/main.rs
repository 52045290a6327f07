//! `app`: the reference service. It is built on the kit's public API only,
//! as any other service is: a name, its own settings, its routes (lib.rs).

use std::process::ExitCode;

fn main() -> ExitCode {
    handover::Service::new("app")
        .version(env!("CARGO_PKG_VERSION"))
        .about(
            "A zero-downtime HTTP service for systemd socket activation (handover's reference app)",
        )
        .settings::<app::AppSettings>()
        .run(app::App::new)
}
