//! Bot classification for edge hosts (feature `bots`).
//!
//! The core never guesses: a host classifies each request and passes the verdict in
//! [`crate::RequestFacts::bot`], and the core refuses its events with the reason `bot`
//! and counts them as filtered. This module is what the hosts (the edge agent and the
//! Spin app) share: the User-Agent against the maintained `isbot` pattern list (search
//! and social crawlers, HTTP libraries, headless browsers) and the CDN's own verdict,
//! read from configurable headers such as Cloudflare's `cf-verified-bot` and bot score.

use serde::Deserialize;

/// Which CDN headers carry a bot verdict, and what counts as a bot.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BotRules {
    /// Refuse requests whose User-Agent matches a known bot (the `isbot` list).
    pub user_agents: bool,
    /// Header the CDN sets to `true` for verified bots (empty: not used).
    pub verified_bot_header: String,
    /// Header with the CDN's bot score, 1 (bot) to 99 (human) (empty: not used).
    pub score_header: String,
    /// Scores below this are bots.
    pub min_score: u32,
}

impl Default for BotRules {
    fn default() -> BotRules {
        BotRules {
            user_agents: true,
            verified_bot_header: "cf-verified-bot".into(),
            score_header: String::new(),
            min_score: 30,
        }
    }
}

/// Classifies requests by [`BotRules`]. Build it once: it compiles the pattern list.
pub struct Classifier {
    rules: BotRules,
    agents: Option<isbot::Bots>,
}

impl Classifier {
    /// A classifier for `rules`.
    pub fn new(rules: BotRules) -> Classifier {
        Classifier {
            agents: rules.user_agents.then(isbot::Bots::default),
            rules,
        }
    }

    /// The rules it applies.
    pub fn rules(&self) -> &BotRules {
        &self.rules
    }

    /// Why the request is a bot (`cdn-verified`, `cdn-score` or `user-agent`), or `None`. `header` looks a request header up by its
    /// (lowercase) name.
    pub fn classify<'h>(&self, user_agent: &str, header: impl Fn(&str) -> Option<&'h str>) -> Option<String> {
        let rules = &self.rules;
        if !rules.verified_bot_header.is_empty()
            && header(&rules.verified_bot_header).is_some_and(|v| v.trim().eq_ignore_ascii_case("true") || v.trim() == "1")
        {
            return Some("cdn-verified".into());
        }
        if !rules.score_header.is_empty()
            && let Some(score) = header(&rules.score_header).and_then(|v| v.trim().parse::<u32>().ok())
            && score < rules.min_score
        {
            return Some("cdn-score".into());
        }
        if let Some(bots) = &self.agents
            && !user_agent.is_empty()
            && bots.is_bot(user_agent)
        {
            return Some("user-agent".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

    fn none(_: &str) -> Option<&'static str> {
        None
    }

    #[test]
    fn crawlers_libraries_and_headless_browsers_are_bots_and_browsers_are_not() {
        let c = Classifier::new(BotRules::default());
        for ua in [
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "curl/8.5.0",
            "python-requests/2.31.0",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36",
        ] {
            assert_eq!(c.classify(ua, none).as_deref(), Some("user-agent"), "{ua}");
        }
        for ua in [
            CHROME,
            "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
            "",
        ] {
            assert_eq!(c.classify(ua, none), None, "{ua}");
        }
    }

    #[test]
    fn cdn_verdicts_are_read_from_the_configured_headers() {
        let c = Classifier::new(BotRules {
            score_header: "cf-bot-score".into(),
            ..BotRules::default()
        });
        let h = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
        };
        assert_eq!(
            c.classify(CHROME, h(&[("cf-verified-bot", "true")])).as_deref(),
            Some("cdn-verified")
        );
        assert_eq!(c.classify(CHROME, h(&[("cf-verified-bot", "false")])), None);
        assert_eq!(
            c.classify(CHROME, h(&[("cf-bot-score", "2")])).as_deref(),
            Some("cdn-score")
        );
        assert_eq!(c.classify(CHROME, h(&[("cf-bot-score", "87")])), None);
        assert_eq!(c.classify(CHROME, h(&[("cf-bot-score", "garbage")])), None);
        let off = Classifier::new(BotRules {
            user_agents: false,
            verified_bot_header: String::new(),
            ..BotRules::default()
        });
        assert_eq!(off.classify("curl/8.5.0", h(&[("cf-verified-bot", "true")])), None);
    }
}
