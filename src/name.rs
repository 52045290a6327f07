//! A service's name, and every name the kit derives from it: the
//! environment prefix, the journal identifier, the unit names, the settings
//! file, the rotation flag. Derived in one place so that two services on one
//! host never share any of them, and so `orders` never reads `APP_*`.

use std::fmt;
use std::path::PathBuf;

/// Longest name accepted: unit names, paths and variables are built from it.
const MAX_LEN: usize = 64;

/// A validated service name: lowercase ASCII letters, digits and `-`,
/// starting with a letter (it becomes unit names, a directory in `/run` and
/// `/etc`, and an environment prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceName(&'static str);

/// Why a name cannot be a service's name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "service name {name:?} {reason}: use lowercase letters, digits and '-', starting with a letter, \
     at most {MAX_LEN} characters (it names units, /etc/NAME and NAME_* variables)"
)]
#[non_exhaustive]
pub struct NameError {
    name: String,
    reason: &'static str,
}

impl ServiceName {
    pub(crate) fn new(name: &'static str) -> Result<Self, NameError> {
        let reason = if name.is_empty() {
            Some("is empty")
        } else if name.len() > MAX_LEN {
            Some("is too long")
        } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            Some("does not start with a lowercase letter")
        } else if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            Some("has a character other than a-z, 0-9 and '-'")
        } else if name.ends_with('-') {
            Some("ends with '-'")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(NameError {
                name: name.to_owned(),
                reason,
            }),
            None => Ok(Self(name)),
        }
    }

    pub(crate) fn as_str(&self) -> &'static str {
        self.0
    }

    /// `ORDERS` for `orders`, `MY_SHOP` for `my-shop`: what the kit's
    /// variables start with (`ORDERS_DRAIN_DEADLINE`).
    pub(crate) fn env_prefix(&self) -> String {
        self.0.to_ascii_uppercase().replace('-', "_")
    }

    /// The environment variable for a setting: `ORDERS_DRAIN_DEADLINE`.
    pub(crate) fn env_var(&self, setting: &str) -> String {
        format!(
            "{}_{}",
            self.env_prefix(),
            setting.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// Where `NAME rotation out` leaves its flag, and every instance looks.
    pub(crate) fn rotation_flag(&self) -> PathBuf {
        PathBuf::from(format!("/run/{}/out-of-rotation", self.0))
    }

    /// The settings file the packaged units pass with `--config`.
    pub(crate) fn config_path(&self) -> PathBuf {
        PathBuf::from(format!("/etc/{0}/{0}.toml", self.0))
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names() {
        let name = ServiceName::new("my-shop").unwrap();
        assert_eq!(name.env_prefix(), "MY_SHOP");
        assert_eq!(name.env_var("drain_deadline"), "MY_SHOP_DRAIN_DEADLINE");
        assert_eq!(
            name.rotation_flag(),
            PathBuf::from("/run/my-shop/out-of-rotation")
        );
        assert_eq!(
            name.config_path(),
            PathBuf::from("/etc/my-shop/my-shop.toml")
        );
    }

    #[test]
    fn bad_names_say_why() {
        for (name, reason) in [
            ("", "is empty"),
            ("Orders", "does not start with a lowercase letter"),
            ("9lives", "does not start with a lowercase letter"),
            ("or ders", "other than"),
            ("orders.d", "other than"),
            ("orders_x", "other than"),
            ("orders-", "ends with"),
        ] {
            let err = ServiceName::new(name).unwrap_err().to_string();
            assert!(err.contains(reason), "{name:?}: {err}");
        }
        let long: &'static str = "a".repeat(MAX_LEN + 1).leak();
        assert!(ServiceName::new(long).is_err());
        assert!(ServiceName::new("app").is_ok());
    }
}
