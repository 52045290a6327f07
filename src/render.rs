//! `NAME units`: everything a service needs around its binary, rendered for
//! its name: the systemd units, the package scripts, the settings file and
//! the man pages.
//!
//! The templates (`src/render/`) are the reference app's files with its name
//! taken out; the repository's own `systemd/` and `packaging/` are `app
//! units --out .` (tests/rendered.rs keeps them equal), so what the kit tests
//! on `app` is what every service ships.

use std::io;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::name::ServiceName;
use crate::settings::{Applies, DECLARED, ServiceSettings};

/// `NAME units`: where to write, and what the packaged files should say.
#[derive(Debug, Clone, Args)]
pub(crate) struct UnitsArgs {
    /// Directory to write into: DIR/systemd holds the units, DIR/packaging the
    /// package scripts, settings file and man pages (created as needed)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Where the package installs the binary [default: /usr/bin/NAME]
    #[arg(long, value_name = "PATH")]
    pub exec: Option<PathBuf>,

    /// The address NAME.socket listens on [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

/// One file to write: its path under the output directory, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rendered {
    pub path: PathBuf,
    pub text: Vec<u8>,
    pub executable: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RenderError {
    #[error("--exec {0}: give an absolute path (systemd runs ExecStart= as written)")]
    RelativeExec(PathBuf),
    #[error("--listen {0:?}: give what ListenStream= takes, such as 127.0.0.1:8080 or [::]:80")]
    Listen(String),
    #[error("cannot render the man pages")]
    Man(#[source] io::Error),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The templates, each with where its output goes (`NAME` is the service's name).
const TEMPLATES: &[(&str, &str, bool)] = &[
    (
        "systemd/NAME.socket",
        include_str!("render/NAME.socket"),
        false,
    ),
    (
        "systemd/NAME@.service",
        include_str!("render/NAME@.service"),
        false,
    ),
    (
        "systemd/NAME.target",
        include_str!("render/NAME.target"),
        false,
    ),
    (
        "packaging/debian/postinst",
        include_str!("render/postinst"),
        true,
    ),
    ("packaging/debian/prerm", include_str!("render/prerm"), true),
    (
        "packaging/debian/postrm",
        include_str!("render/postrm"),
        true,
    ),
    (
        "packaging/debian/lintian-overrides",
        include_str!("render/lintian-overrides"),
        false,
    ),
    (
        "packaging/rpm/post_install.sh",
        include_str!("render/post_install.sh"),
        false,
    ),
    (
        "packaging/rpm/pre_uninstall.sh",
        include_str!("render/pre_uninstall.sh"),
        false,
    ),
    (
        "packaging/rpm/post_uninstall.sh",
        include_str!("render/post_uninstall.sh"),
        false,
    ),
    (
        "packaging/NAME.toml",
        include_str!("render/NAME.toml"),
        false,
    ),
];

/// Every file for the service `name`, whose CLI is `cli` and whose own
/// settings are `T`. Pure: writing is [`write`]'s.
pub(crate) fn render<T: ServiceSettings>(
    name: &ServiceName,
    args: &UnitsArgs,
    cli: &clap::Command,
) -> Result<Vec<Rendered>, RenderError> {
    let exec = match &args.exec {
        Some(exec) if exec.is_relative() => return Err(RenderError::RelativeExec(exec.clone())),
        Some(exec) => exec.display().to_string(),
        None => format!("/usr/bin/{name}"),
    };
    let listen = args
        .listen
        .clone()
        .unwrap_or_else(|| crate::settings::DEFAULT_LISTEN.to_owned());
    if listen.is_empty() || listen.contains(char::is_whitespace) {
        return Err(RenderError::Listen(listen));
    }
    let section = service_section::<T>(name);
    // The kit's settings first: their comments name {{name}} too.
    let vars: [(&str, &str); 7] = [
        ("{{kit_settings}}", &kit_settings()),
        ("{{name}}", name.as_str()),
        ("{{ENV}}", &name.env_prefix()),
        ("{{exec}}", &exec),
        ("{{config}}", &name.config_path().display().to_string()),
        ("{{listen}}", &listen),
        ("{{service_section}}", &section),
    ];
    let mut files: Vec<Rendered> = TEMPLATES
        .iter()
        .map(|(path, template, executable)| {
            let text = vars
                .iter()
                .fold((*template).to_owned(), |text, (var, value)| {
                    text.replace(var, value)
                });
            Rendered {
                path: PathBuf::from(path.replace("NAME", name.as_str())),
                text: text.into_bytes(),
                executable: *executable,
            }
        })
        .collect();
    files.extend(man_pages(name, cli).map_err(RenderError::Man)?);
    Ok(files)
}

/// The kit's settings in the packaged settings file, from their
/// declarations: each one's comment, when a change applies, and its
/// default, commented out.
fn kit_settings() -> String {
    let mut text = String::new();
    for setting in DECLARED.iter().filter(|setting| !setting.file.is_empty()) {
        text.push('\n');
        for line in setting.file.lines() {
            text.push_str(&format!("# {}\n", line.trim()));
        }
        text.push_str(match setting.applies {
            Applies::OnReload => "# A reload applies it.\n",
            Applies::AtRestart => {
                "# A restart applies it ({{name}} rollout --restart), a reload does not.\n"
            }
        });
        text.push_str(&format!("#{} = {}\n", setting.key, (setting.toml)()));
    }
    text
}

/// The service's own section of the settings file: its defaults, commented
/// out as the kit's are, or nothing for a service without settings.
fn service_section<T: ServiceSettings>(name: &ServiceName) -> String {
    let defaults = toml::to_string(&T::default()).unwrap_or_default();
    let mut lines = defaults
        .lines()
        .filter(|line| !line.trim().is_empty())
        .peekable();
    if lines.peek().is_none() {
        return String::new();
    }
    let mut text = format!(
        "\n# {name}'s own settings, with their defaults. Uncomment [{name}] too\n\
         # when you set one.\n#[{name}]\n"
    );
    for line in lines {
        text.push('#');
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// `NAME.1` and a page for each verb, from the service's own CLI.
fn man_pages(name: &ServiceName, cli: &clap::Command) -> io::Result<Vec<Rendered>> {
    let version = cli.get_version().map(str::to_owned);
    let mut pages = vec![(format!("{name}.1"), cli.clone())];
    for verb in cli.get_subcommands() {
        let page = format!("{name}-{}", verb.get_name());
        let mut command = verb
            .clone()
            .name(page.clone())
            .bin_name(format!("{name} {}", verb.get_name()));
        if let Some(version) = &version {
            command = command.version(version.clone());
        }
        pages.push((format!("{page}.1"), command));
    }
    pages
        .into_iter()
        .map(|(file, command)| {
            let mut text = Vec::new();
            clap_mangen::Man::new(command).render(&mut text)?;
            Ok(Rendered {
                path: Path::new("packaging/man").join(file),
                text,
                executable: false,
            })
        })
        .collect()
}

/// Writes `files` under `out`, creating directories; returns the paths written.
pub(crate) fn write(out: &Path, files: &[Rendered]) -> Result<Vec<PathBuf>, RenderError> {
    use std::os::unix::fs::PermissionsExt;
    let mut written = Vec::with_capacity(files.len());
    for file in files {
        let path = out.join(&file.path);
        let fail = |source| RenderError::Write {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        std::fs::write(&path, &file.text).map_err(fail)?;
        let mode = if file.executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{FileSettings, NoSettings, ServeArgs, Settings, SettingsFile};

    fn args() -> UnitsArgs {
        UnitsArgs {
            out: PathBuf::from("out"),
            exec: None,
            listen: None,
        }
    }

    fn rendered<T: ServiceSettings>(name: &'static str) -> Vec<Rendered> {
        let name = ServiceName::new(name).unwrap();
        let cli = crate::cli::command(&name, None, Some("1.0.0"));
        render::<T>(&name, &args(), &cli).unwrap()
    }

    fn text<'a>(files: &'a [Rendered], path: &str) -> &'a str {
        let file = files
            .iter()
            .find(|f| f.path == Path::new(path))
            .unwrap_or_else(|| panic!("no {path}"));
        std::str::from_utf8(&file.text).unwrap()
    }

    #[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
    struct Orders {
        database_url: String,
        pool: u32,
    }
    impl ServiceSettings for Orders {}

    #[test]
    fn every_name_comes_from_the_service() {
        let files = rendered::<Orders>("orders");
        let all: String = files
            .iter()
            .filter(|f| !f.path.starts_with("packaging/man"))
            .map(|f| String::from_utf8_lossy(&f.text).into_owned())
            .collect();
        assert!(!all.contains("{{"), "an unrendered variable:\n{all}");
        let unit = text(&files, "systemd/orders@.service");
        assert!(unit.contains(
            "ExecStart=/usr/bin/orders --instance %i --config /etc/orders/orders.toml --require-socket"
        ));
        assert!(unit.contains("Sockets=orders.socket"));
        assert!(text(&files, "packaging/debian/postinst").contains("orders rollout --if-running"));
        assert!(text(&files, "packaging/orders.toml").contains("ORDERS_* environment"));
        for word in all.split(|c: char| !c.is_ascii_alphanumeric() && c != '_') {
            assert_ne!(word, "app", "the reference app's name in a rendered file");
            assert_ne!(word, "APP", "the reference app's prefix in a rendered file");
        }
        for page in [
            "orders.1",
            "orders-rollout.1",
            "orders-rotation.1",
            "orders-units.1",
        ] {
            let man = text(&files, &format!("packaging/man/{page}"));
            assert!(man.contains("orders"), "{page}");
        }
    }

    #[test]
    fn exec_must_be_absolute() {
        let name = ServiceName::new("orders").unwrap();
        let cli = crate::cli::command(&name, None, None);
        let mut args = args();
        args.exec = Some("bin/orders".into());
        let err = render::<NoSettings>(&name, &args, &cli).unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
    }

    /// The packaged settings file documents the defaults as commented-out
    /// lines. As shipped it must parse (an instance must start on it), and
    /// with every line uncommented it must still give the built-in defaults,
    /// the service's section included, so its comments never drift from the code.
    #[test]
    fn the_packaged_settings_file_shows_the_defaults() {
        let files = rendered::<Orders>("orders");
        let shipped = text(&files, "packaging/orders.toml");
        let path = Path::new("orders.toml");
        let parsed = SettingsFile::<Orders>::parse(path, shipped, "orders").unwrap();
        assert_eq!(parsed.kit, FileSettings::default());

        let uncommented: String = shipped
            .lines()
            .filter_map(|line| line.strip_prefix('#'))
            .filter(|line| {
                line.starts_with(|c: char| c.is_ascii_lowercase()) && line.contains(" = ")
                    || line.starts_with('[')
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let keys = uncommented.lines().filter(|l| l.contains(" = ")).count();
        let in_file = crate::settings::DECLARED
            .iter()
            .filter(|setting| !setting.file.is_empty())
            .count();
        assert_eq!(
            keys,
            in_file + 2,
            "every kit setting the file shows, and the service's two:\n{uncommented}"
        );
        let from_file = SettingsFile::<Orders>::parse(path, &uncommented, "orders").unwrap();
        let resolve = |file| Settings::resolve(&ServeArgs::default(), file).unwrap();
        assert_eq!(resolve(&from_file.kit), resolve(&FileSettings::default()));
        assert_eq!(from_file.service.pool, 0);
    }
}
