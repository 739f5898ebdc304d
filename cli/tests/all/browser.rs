//! In a real browser: Debian's chromium, driven by playwright-core (both installed by
//! `scripts/browser-deps`, which this test runs; idempotent), plays a real <video> with
//! tally.js attached against a real `tally edge` and `tally merger`. The view, the
//! watch time and a like reach the merger; a reload inside the session adds no view;
//! the dashboard shows the counts (read from its DOM; screenshots saved under the
//! test's output directory). The SDK's own unit tests run here too, under node's test
//! runner.

use crate::common::{Agent, KEY, Merger, loop_until};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

#[test]
fn the_sdks_unit_tests_pass_under_nodes_test_runner() {
    let out = run(
        Command::new("node").arg("--test").arg(repo().join("web/sdk/test")),
        "node --test web/sdk/test",
    );
    assert!(out.contains("# fail 0") && !out.contains("# pass 0"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_plays_likes_and_reloads_and_the_dashboard_shows_it() {
    run(
        &mut Command::new(repo().join("scripts/browser-deps")),
        "scripts/browser-deps",
    );
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(&dir.path().join("m"));
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &dir.path().join("fra"), &[]);
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    // a live stream, so that the page's <tally-live> element has a viewer to show
    let video = "live-browser";
    let node = tokio::task::spawn_blocking({
        let (agent, merger, key, out_dir) = (
            format!("http://{}", fra.http),
            format!("http://{}", m.http),
            m.key.clone(),
            out_dir.clone(),
        );
        move || {
            run(
                Command::new("timeout")
                    .arg("180")
                    .arg("node")
                    .arg(repo().join("web/browser-tests/run.mjs"))
                    .env("AGENT", agent)
                    .env("MERGER", merger)
                    .env("TOKEN_KEY", KEY)
                    .env("API_KEY", key)
                    .env("VIDEO", video)
                    .env("OUT", &out_dir),
                "the browser run",
            )
        }
    })
    .await
    .unwrap();
    let seen: serde_json::Value = serde_json::from_str(node.lines().last().unwrap_or("")).expect(&node);
    eprintln!("browser run: {seen}");
    assert!(
        seen["refusals"].as_array().unwrap().is_empty(),
        "the edge refused events: {seen}"
    );
    assert_eq!(
        seen["session"], seen["session_after_reload"],
        "a reload keeps the session: {seen}"
    );
    // the merger: one view (the reload added none), watch time, the like
    let stats = loop_until(Duration::from_secs(20), || {
        let m = &m;
        async move {
            let (s, j) = m.get(&format!("/v1/videos/{video}/stats")).await;
            (s == 200 && j["likes"] == 1 && j["watch_time_s"].as_u64().unwrap_or(0) >= 2).then_some(j)
        }
    })
    .await
    .expect("the view, watch time and like reach the merger");
    assert_eq!(stats["views"], 1, "{stats}");
    // what the page's <tally-views> element and the dashboard showed
    assert_eq!(seen["views_element"], "1", "{seen}");
    assert_eq!(
        seen["live_element"], "1",
        "<tally-live> shows the one viewer watching: {seen}"
    );
    let d = &seen["dashboard"];
    assert_eq!(
        (d["views"].as_str(), d["likes"].as_str(), d["uniques"].as_str()),
        (Some("1"), Some("1"), Some("1")),
        "{seen}"
    );
    assert!(d["watch_s"].as_str().unwrap().parse::<u64>().unwrap() >= 2, "{seen}");
    assert_eq!(d["status"], "", "{seen}");
    assert_eq!(
        (d["map_de"].as_str(), d["map_fr"].as_str()),
        (Some("1"), Some("")),
        "the map colours the viewer's country: {seen}"
    );
    assert_eq!(seen["filtered_views"], "1", "{seen}");
    assert_eq!(
        seen["phone_overflow"], false,
        "the dashboard fits a phone screen: {seen}"
    );
    for shot in ["dashboard.png", "dashboard-phone.png"] {
        let len = std::fs::metadata(out_dir.join(shot)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 10_000, "{shot}: {len} bytes");
    }
}
