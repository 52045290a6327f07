//! The settings file and duration parsers: any text gives settings that pass
//! validation or an error that is one line; never a panic.
#![no_main]

use std::path::Path;
use std::time::Duration;

use handover::NoSettings;
use handover::internals::{ServeArgs, Settings, SettingsFile};
use handover::settings::parse_duration;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Before the first NUL: a settings file. After it: a flag's duration.
    let (file, flag) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    if let Ok(text) = std::str::from_utf8(file) {
        // The kit's keys and a service's section (here one without keys).
        match SettingsFile::<NoSettings>::parse(Path::new("/etc/app/app.toml"), text, "app") {
            Ok(file) => match Settings::resolve(&ServeArgs::default(), &file.kit) {
                Ok(settings) => {
                    let t = settings.timeouts;
                    for d in [
                        settings.drain_deadline,
                        t.header_read,
                        t.idle,
                        t.idle_grace,
                    ] {
                        assert!(!d.is_zero() && d <= Duration::from_secs(3600));
                    }
                    assert!(t.idle_grace < settings.drain_deadline);
                }
                Err(err) => assert_one_line(&handover::error_chain(&err)),
            },
            Err(err) => assert_one_line(&handover::error_chain(&err)),
        }
    }
    if let Some(Ok(text)) = flag.map(std::str::from_utf8) {
        if let Err(message) = parse_duration(text) {
            assert_one_line(&message);
        }
    }
});

fn assert_one_line(message: &str) {
    assert!(!message.is_empty());
    assert!(!message.contains('\n'), "an error spans lines: {message:?}");
}
