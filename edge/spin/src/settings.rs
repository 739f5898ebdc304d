//! The component's settings, read from Spin variables (see `spin.toml`).

use tally_collector::Config;

/// What the component runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Base URL of the merger's HTTP(S) API, without a trailing slash.
    pub merger_url: String,
    /// The secret the merger knows this edge by.
    pub edge_secret: String,
    /// Collector settings (edge id, PoP, token key, dedup window, body limit).
    pub collector: Config,
    /// Request header that carries the viewer's country (set by the CDN).
    pub country_header: String,
    /// Request header that carries the client address, when a proxy sets one.
    pub client_addr_header: Option<String>,
    /// How long a stats answer is served from the store before it is fetched again.
    pub stats_cache_ms: u64,
    /// Label of the key-value store.
    pub store: String,
    /// Frame epochs (lanes) this app uses: the merger tracks this many (edge, epoch)
    /// pairs for it, however many viewers it serves.
    pub epoch_lanes: u32,
}

/// Why the settings are unusable; names the variable to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spin variable `{name}`: {why}")]
pub struct SettingsError {
    /// The variable.
    pub name: &'static str,
    /// What is wrong with it.
    pub why: String,
}

impl Settings {
    /// Reads the settings through `get`, which returns `Ok(None)` for an undefined
    /// variable and `Err` when the variable could not be read.
    pub fn from_variables(
        get: impl Fn(&'static str) -> Result<Option<String>, String>,
    ) -> Result<Settings, SettingsError> {
        let read = |name: &'static str| -> Result<Option<String>, SettingsError> {
            get(name)
                .map(|v| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()))
                .map_err(|why| SettingsError { name, why })
        };
        let required = |name: &'static str| {
            read(name)?.ok_or(SettingsError {
                name,
                why: "must be set".into(),
            })
        };
        let number = |name: &'static str, default: u64| -> Result<u64, SettingsError> {
            match read(name)? {
                None => Ok(default),
                Some(v) => v.parse().map_err(|_| SettingsError {
                    name,
                    why: format!("{v:?} is not a whole number"),
                }),
            }
        };
        let merger_url = required("merger_url")?.trim_end_matches('/').to_owned();
        if !merger_url.starts_with("https://") && !merger_url.starts_with("http://") {
            return Err(SettingsError {
                name: "merger_url",
                why: format!("{merger_url:?} must start with https:// (or http://)"),
            });
        }
        let edge_id = required("edge_id")?;
        let token_key = required("token_key")?;
        let mut collector = Config::new(
            &read("pop_id")?.unwrap_or_else(|| "spin".into()),
            &edge_id,
            1,
            token_key.as_bytes(),
        );
        collector.dedup_window_ms = number("dedup_window_ms", collector.dedup_window_ms)?;
        collector.max_body_bytes = number("max_body_bytes", collector.max_body_bytes.into())?
            .try_into()
            .map_err(|_| SettingsError {
                name: "max_body_bytes",
                why: "must be below 4 GiB".into(),
            })?;
        collector.validate().map_err(|e| SettingsError {
            name: match e.field {
                "token-key" => "token_key",
                "edge-id" => "edge_id",
                "pop-id" => "pop_id",
                "dedup-window-ms" => "dedup_window_ms",
                "max-body-bytes" => "max_body_bytes",
                _ => "token_key",
            },
            why: e.to_string(),
        })?;
        Ok(Settings {
            merger_url,
            edge_secret: required("edge_secret")?,
            collector,
            country_header: read("country_header")?
                .unwrap_or_else(|| "cf-ipcountry".into())
                .to_ascii_lowercase(),
            client_addr_header: read("client_addr_header")?.map(|h| h.to_ascii_lowercase()),
            stats_cache_ms: number("stats_cache_ms", 1_000)?,
            store: read("kv_store")?.unwrap_or_else(|| "default".into()),
            epoch_lanes: match number("epoch_lanes", 64)? {
                n @ 1..=4096 => n as u32,
                n => {
                    return Err(SettingsError {
                        name: "epoch_lanes",
                        why: format!("{n} is not between 1 and 4096"),
                    });
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn load(v: &HashMap<String, String>) -> Result<Settings, SettingsError> {
        Settings::from_variables(|n| Ok(v.get(n).cloned()))
    }

    const GOOD: &[(&str, &str)] = &[
        ("merger_url", "https://127.0.0.1:8443/"),
        ("edge_id", "spin-fra"),
        ("edge_secret", "s3cret"),
        ("token_key", "0123456789abcdef0123"),
    ];

    #[test]
    fn defaults_fill_what_is_not_set() {
        let s = load(&vars(GOOD)).unwrap();
        assert_eq!(s.merger_url, "https://127.0.0.1:8443");
        assert_eq!(s.collector.edge_id, "spin-fra");
        assert_eq!(s.collector.dedup_window_ms, 30 * 60 * 1000);
        assert_eq!(s.country_header, "cf-ipcountry");
        assert_eq!(s.stats_cache_ms, 1_000);
        assert_eq!(s.store, "default");
        assert_eq!(s.epoch_lanes, 64);
    }

    #[test]
    fn errors_name_the_variable() {
        let mut v = vars(GOOD);
        v.remove("edge_secret");
        assert_eq!(load(&v).unwrap_err().name, "edge_secret");
        let mut v = vars(GOOD);
        v.insert("dedup_window_ms".into(), "soon".into());
        let e = load(&v).unwrap_err();
        assert_eq!(e.name, "dedup_window_ms");
        assert!(e.to_string().contains("soon"), "{e}");
        let mut v = vars(GOOD);
        v.insert("token_key".into(), "short".into());
        assert_eq!(load(&v).unwrap_err().name, "token_key");
        let mut v = vars(GOOD);
        v.insert("merger_url".into(), "127.0.0.1:1".into());
        assert_eq!(load(&v).unwrap_err().name, "merger_url");
        let mut v = vars(GOOD);
        v.insert("epoch_lanes".into(), "0".into());
        assert_eq!(load(&v).unwrap_err().name, "epoch_lanes");
        let e = Settings::from_variables(|_| Err("provider down".into())).unwrap_err();
        assert_eq!(e.name, "merger_url");
    }
}
