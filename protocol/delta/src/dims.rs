//! The small closed dimensions of a counter row: device, traffic source, country.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The kind of device a view came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Device {
    /// Phones.
    Mobile,
    /// Desktop and laptop browsers.
    Desktop,
    /// Tablets.
    Tablet,
    /// Smart TVs and set-top boxes.
    Tv,
    /// Anything else, or not stated.
    Other,
}

impl Device {
    /// All devices, in wire order.
    pub const ALL: [Device; 5] = [
        Device::Mobile,
        Device::Desktop,
        Device::Tablet,
        Device::Tv,
        Device::Other,
    ];

    /// Parses the beacon spelling (`mobile`, `desktop`, `tablet`, `tv`, `other`).
    pub fn parse(s: &str) -> Option<Device> {
        Some(match s {
            "mobile" => Device::Mobile,
            "desktop" => Device::Desktop,
            "tablet" => Device::Tablet,
            "tv" => Device::Tv,
            "other" => Device::Other,
            _ => return None,
        })
    }

    /// The beacon spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Mobile => "mobile",
            Device::Desktop => "desktop",
            Device::Tablet => "tablet",
            Device::Tv => "tv",
            Device::Other => "other",
        }
    }

    /// A best guess from a User-Agent header, for beacons that do not state a device.
    pub fn from_user_agent(ua: &str) -> Device {
        let has = |needle: &str| {
            ua.as_bytes()
                .windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
        };
        if ua.is_empty() {
            Device::Other
        } else if has("smart-tv") || has("smarttv") || has("appletv") || has("tizen") || has("webos") || has("crkey") {
            Device::Tv
        } else if has("ipad") || has("tablet") {
            Device::Tablet
        } else if has("mobi") || has("iphone") || has("android") {
            Device::Mobile
        } else {
            Device::Desktop
        }
    }
}

/// Where the viewer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Source {
    /// Search results.
    Search,
    /// Suggested / up-next.
    Suggested,
    /// Browsing feeds and the home page.
    Browse,
    /// Links and embeds on other sites.
    External,
    /// Typed or bookmarked URL.
    Direct,
    /// Push or e-mail notifications.
    Notification,
    /// Anything else, or not stated.
    Other,
}

impl Source {
    /// All sources, in wire order.
    pub const ALL: [Source; 7] = [
        Source::Search,
        Source::Suggested,
        Source::Browse,
        Source::External,
        Source::Direct,
        Source::Notification,
        Source::Other,
    ];

    /// Parses the beacon spelling.
    pub fn parse(s: &str) -> Option<Source> {
        Some(match s {
            "search" => Source::Search,
            "suggested" => Source::Suggested,
            "browse" => Source::Browse,
            "external" => Source::External,
            "direct" => Source::Direct,
            "notification" => Source::Notification,
            "other" => Source::Other,
            _ => return None,
        })
    }

    /// The beacon spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Search => "search",
            Source::Suggested => "suggested",
            Source::Browse => "browse",
            Source::External => "external",
            Source::Direct => "direct",
            Source::Notification => "notification",
            Source::Other => "other",
        }
    }
}

/// An ISO 3166-1 alpha-2 country code, upper case; `XX` when unknown.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Country(pub [u8; 2]);

impl Country {
    /// The code used when the CDN did not say.
    pub const UNKNOWN: Country = Country(*b"XX");

    /// Reads a header value such as `de` or `DE`; anything that is not two ASCII letters
    /// is [`Country::UNKNOWN`].
    pub fn from_header(value: &str) -> Country {
        match value.trim().as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
            }
            _ => Country::UNKNOWN,
        }
    }

    /// The two-letter code.
    pub fn as_str(&self) -> &str {
        // Constructed only from ASCII letters (or deserialised and then checked by
        // `DeltaFrame::validate`), so this never fails; fall back defensively anyway.
        std::str::from_utf8(&self.0).unwrap_or("XX")
    }

    /// Whether both bytes are ASCII upper-case letters.
    pub fn is_valid(&self) -> bool {
        self.0.iter().all(|b| b.is_ascii_uppercase())
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for d in Device::ALL {
            assert_eq!(Device::parse(d.as_str()), Some(d));
        }
        for s in Source::ALL {
            assert_eq!(Source::parse(s.as_str()), Some(s));
        }
        assert_eq!(Device::parse("phone"), None);
        assert_eq!(Source::parse(""), None);
    }

    #[test]
    fn country_header_is_normalised() {
        assert_eq!(Country::from_header(" de ").as_str(), "DE");
        assert_eq!(Country::from_header("DEU"), Country::UNKNOWN);
        assert_eq!(Country::from_header("1a"), Country::UNKNOWN);
    }

    #[test]
    fn user_agent_guesses() {
        assert_eq!(
            Device::from_user_agent("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)"),
            Device::Mobile
        );
        assert_eq!(
            Device::from_user_agent("Mozilla/5.0 (iPad; CPU OS 17_0)"),
            Device::Tablet
        );
        assert_eq!(
            Device::from_user_agent("Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0)"),
            Device::Tv
        );
        assert_eq!(
            Device::from_user_agent("Mozilla/5.0 (X11; Linux x86_64)"),
            Device::Desktop
        );
        assert_eq!(Device::from_user_agent(""), Device::Other);
    }
}
