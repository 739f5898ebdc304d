//! The player SDK, `tally.js`, as the edges serve it (`GET /tally.js`, `GET /tally.mjs`).
//! The JavaScript lives beside this crate (`web/sdk/tally.js`), with its node tests.

/// `tally.js`: the script-tag form (sets `window.Tally`).
pub const TALLY_JS: &str = include_str!("../tally.js");

/// `tally.mjs`: the ES module form (imports `./tally.js`).
pub const TALLY_MJS: &str = include_str!("../tally.mjs");

/// The file served at `path`, if it is one of the SDK's: (body, content type).
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/tally.js" => Some((TALLY_JS, "text/javascript; charset=utf-8")),
        "/tally.mjs" => Some((TALLY_MJS, "text/javascript; charset=utf-8")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_forms_are_served_and_nothing_else() {
        assert!(super::asset("/tally.js").unwrap().0.contains("root.Tally = Tally"));
        assert!(super::asset("/tally.mjs").unwrap().0.contains("import \"./tally.js\""));
        assert!(super::asset("/other.js").is_none());
    }
}
