//! The analytics API the dashboard reads, over real processes: filters that combine (is,
//! in, is not), date ranges and ISO times with zones, totals with unique viewers and the
//! previous period, pagination, CSV, and concurrent viewers over time.

use crate::common::{Agent, KEY, Merger, event_signed, loop_until, merger_views, now_ms};
use serde_json::{Value, json};
use std::time::Duration;

fn token(video: &str, channel: &str, session: &str, live: bool) -> String {
    let now = now_ms() / 1000;
    tally_collector::token::mint(
        KEY.as_bytes(),
        &tally_collector::Claims {
            video: video.into(),
            channel: channel.into(),
            category: "music".into(),
            live,
            session: session.into(),
            user: None,
            issued_s: now - 60,
            expires_s: now + 3600,
        },
    )
}

/// A play of `video` in a new session `sess`, from `country` on `device`.
async fn play(
    http: &reqwest::Client,
    agent: &Agent,
    video: &str,
    channel: &str,
    sess: &str,
    country: &str,
    device: &str,
) {
    let mut e = event_signed(
        &format!("{sess}-1"),
        sess,
        video,
        "play",
        &token(video, channel, sess, video.starts_with("live")),
    );
    e["device"] = json!(device);
    let r = http
        .post(agent.url("/v1/events"))
        .header("cf-ipcountry", country)
        .json(&json!({ "events": [e] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_ranges_totals_comparison_pages_csv_and_concurrent_viewers() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(&dir.path().join("m"));
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &dir.path().join("fra"), &[]);
    let http = reqwest::Client::new();
    for (i, (country, device)) in [
        ("DE", "desktop"),
        ("DE", "desktop"),
        ("DE", "desktop"),
        ("FR", "mobile"),
    ]
    .iter()
    .enumerate()
    {
        play(&http, &fra, "va", "chA", &format!("a{i}"), country, device).await;
    }
    for i in 0..2 {
        play(&http, &fra, "vb", "chB", &format!("b{i}"), "US", "tv").await;
    }
    play(&http, &fra, "live-x", "chB", "l0", "US", "tv").await;
    assert_eq!(merger_views(&m, 7, Duration::from_secs(20)).await, 7);
    let rows = |j: &Value| -> Vec<(String, u64)> {
        j["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["key"].as_str().unwrap().to_owned(), r["views"].as_u64().unwrap()))
            .collect()
    };
    let by_country = loop_until(Duration::from_secs(20), || {
        let m = &m;
        async move {
            let (_, j) = m.get("/v1/analytics/breakdown?by=country&date_range=60m").await;
            (j["rows"].as_array().map(|r| r.len()) == Some(3)).then_some(j)
        }
    })
    .await
    .expect("the tiers have the rows");
    let s = |k: &str, n: u64| (k.to_string(), n);
    assert_eq!(rows(&by_country), vec![s("DE", 3), s("US", 3), s("FR", 1)]);

    // is, in, is not, and two dimensions at once
    for (q, want) in [
        ("country=DE", vec![s("va", 3)]),
        ("country=de,fr", vec![s("va", 4)]),
        ("country=!US", vec![s("va", 4)]),
        ("country=!DE,US", vec![s("va", 1)]),
        ("country=DE,FR&device=mobile", vec![s("va", 1)]),
        ("device=!tv&channel=chB", vec![]),
    ] {
        let (st, j) = m
            .get(&format!("/v1/analytics/breakdown?by=video&date_range=24h&{q}"))
            .await;
        assert_eq!(st, 200, "{q}: {j}");
        assert_eq!(rows(&j), want, "{q}");
    }

    // unique viewers per video in a breakdown by video (sketches are per video), not
    // where another dimension filters the rows
    let (_, j) = m.get("/v1/analytics/breakdown?by=video&date_range=24h").await;
    let uniques: Vec<(String, u64)> = j["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["key"].as_str().unwrap().to_owned(), r["uniques"].as_u64().unwrap()))
        .collect();
    assert_eq!(uniques, vec![s("va", 4), s("vb", 2), s("live-x", 1)], "{j}");
    let (_, j) = m
        .get("/v1/analytics/breakdown?by=video&date_range=24h&country=DE")
        .await;
    assert!(j["rows"][0]["uniques"].is_null(), "{j}");

    // ranges: ISO dates and times with zones, shortcuts; bad ones named
    let today = chrono::Utc::now().date_naive();
    let tomorrow = today.succ_opt().unwrap();
    let local = (chrono::Utc::now() - chrono::Duration::hours(1))
        .with_timezone(&chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap())
        .to_rfc3339();
    for q in [
        format!("from={today}&to={tomorrow}"),
        format!("from={}", local.replace('+', "%2B")),
        "date_range=12mo".to_string(),
    ] {
        let (st, j) = m.get(&format!("/v1/analytics/aggregate?{q}")).await;
        assert_eq!((st, j["views"].as_u64()), (200, Some(7)), "{q}: {j}");
    }
    for bad in [
        "date_range=week",
        "from=yesterday",
        "date_range=24h&from=0",
        "compare=lastyear",
        "format=xml",
        "page=0&by=video",
    ] {
        let path = if bad.contains("by=") { "breakdown" } else { "aggregate" };
        let (st, j) = m.get(&format!("/v1/analytics/{path}?{bad}")).await;
        assert_eq!(st, 400, "{bad}: {j}");
        assert!(j["error"].as_str().unwrap().contains('`'), "{j}");
    }

    // totals: unique viewers from the sketches, average view duration, the previous period
    let (_, agg) = m.get("/v1/analytics/aggregate?date_range=24h&compare=previous").await;
    assert_eq!(agg["views"], 7, "{agg}");
    assert_eq!(agg["uniques"], 7, "{agg}");
    assert_eq!(agg["previous"]["views"], 0, "{agg}");
    assert_eq!(agg["previous"]["to"], agg["from"], "{agg}");
    let (_, agg) = m.get("/v1/analytics/aggregate?date_range=24h&video=va").await;
    assert_eq!(
        (agg["views"].as_u64(), agg["uniques"].as_u64()),
        (Some(4), Some(4)),
        "{agg}"
    );
    let (_, agg) = m.get("/v1/analytics/aggregate?date_range=24h&country=US").await;
    assert_eq!(
        (agg["views"].as_u64(), agg["uniques"].is_null()),
        (Some(3), true),
        "sketches are per video: {agg}"
    );
    let (_, ts) = m.get("/v1/analytics/timeseries?date_range=60m&compare=previous").await;
    let sum = |pts: &Value| {
        pts.as_array()
            .unwrap()
            .iter()
            .map(|p| p["views"].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!((sum(&ts["points"]), sum(&ts["previous"]["points"])), (7, 0), "{ts}");

    // pages
    let page = |n: u32| {
        let m = &m;
        async move {
            m.get(&format!(
                "/v1/analytics/breakdown?by=country&date_range=24h&limit=1&page={n}"
            ))
            .await
            .1
        }
    };
    let (p1, p3, p4) = (page(1).await, page(3).await, page(4).await);
    assert_eq!((rows(&p1), p1["more"].as_bool()), (vec![s("DE", 3)], Some(true)));
    assert_eq!((rows(&p3), p3["more"].as_bool()), (vec![s("FR", 1)], Some(false)));
    assert!(rows(&p4).is_empty());

    // CSV of any table
    let r = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/analytics/breakdown?by=country&date_range=24h&format=csv",
            m.http
        ))
        .bearer_auth(&m.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let text = r.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "country,views,watch_time_s,completions,likes,shares,comments");
    assert!(lines[1].starts_with("\"DE\",3,"), "{text}");
    assert_eq!(lines.len(), 4);

    // concurrent viewers of the live stream over time (sampled every 5 s)
    let series = loop_until(Duration::from_secs(20), || {
        let m = &m;
        async move {
            let (_, j) = m.get("/v1/analytics/concurrent?stream=live-x").await;
            (j["streams"][0]["points"].as_array().is_some_and(|p| !p.is_empty())).then_some(j)
        }
    })
    .await
    .expect("a point for the live stream");
    assert_eq!(series["streams"][0]["stream"], "live-x");
    assert_eq!(series["streams"][0]["points"][0]["watching"], 1, "{series}");

    // times at the edge of what is accepted answer or name the bound, never a 500
    let edge_times = [
        "from=253402300700000&to=253402300800000",
        "from=253402300700000",
        "from=0&to=253402300800000",
        "from=253402300700000&to=253402300800000&compare=previous",
        "from=253402300800001",
        "to=18446744073709551615",
    ];
    for path in [
        "timeseries?granularity=minute&",
        "timeseries?granularity=day&",
        "breakdown?by=video&",
        "aggregate?",
        "uniques?",
        "bots?",
        "concurrent?",
    ] {
        for t in edge_times {
            let (status, j) = m.get(&format!("/v1/analytics/{path}{t}")).await;
            assert!(
                status == 200 || (status == 400 && j["error"].as_str().is_some_and(|e| e.contains('`'))),
                "{path}{t}: {status} {j}"
            );
        }
    }
}

/// Both OpenAPI documents are generated from the handlers: every documented GET answers
/// (no "no such endpoint"), the analytics need an API key, and the edge's document has
/// the beacon endpoint with its body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_documents_match_what_the_servers_answer() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(&dir.path().join("m"));
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &dir.path().join("fra"), &[]);
    let http = reqwest::Client::new();
    let (_, merger_doc) = m.get("/openapi.json").await;
    let edge_doc: Value = http
        .get(fra.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (doc, base, want) in [
        (
            &merger_doc,
            format!("http://{}", m.http),
            vec![
                "/",
                "/healthz",
                "/metrics",
                "/v1/top",
                "/v1/frames",
                "/v1/videos/{id}/stats",
                "/v1/videos/{id}/block",
                "/v1/live/{stream}",
                "/v1/live/{stream}/events",
                "/v1/analytics/timeseries",
                "/v1/analytics/breakdown",
                "/v1/analytics/aggregate",
                "/v1/analytics/uniques",
                "/v1/analytics/bots",
                "/v1/analytics/concurrent",
            ],
        ),
        (
            &edge_doc,
            format!("http://{}", fra.http),
            vec![
                "/v1/events",
                "/v1/videos/{id}/stats",
                "/v1/live/{stream}",
                "/v1/live/{stream}/events",
                "/healthz",
                "/metrics",
                "/admin/component",
                "/tally.js",
                "/tally.mjs",
            ],
        ),
    ] {
        let paths = doc["paths"].as_object().unwrap_or_else(|| panic!("{doc}"));
        let mut have: Vec<&str> = paths.keys().map(String::as_str).collect();
        have.sort();
        let mut want = want;
        want.sort();
        assert_eq!(have, want, "documented paths of {base}");
        for (path, item) in paths {
            if item.get("get").is_none() || path.ends_with("/events") {
                continue;
            }
            let url = format!("{base}{}", path.replace("{id}", "v1").replace("{stream}", "s1"));
            let r = http.get(&url).bearer_auth(&m.key).send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            assert!(
                !body.contains("no such endpoint"),
                "{url} is documented but not served: {status} {body}"
            );
        }
    }
    let analytics = &merger_doc["paths"]["/v1/analytics/breakdown"]["get"];
    assert_eq!(analytics["security"][0]["api_key"], json!([]), "{analytics}");
    let params: Vec<&str> = analytics["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in ["by", "page", "date_range", "compare", "country", "format"] {
        assert!(params.contains(&p), "{p} in {params:?}");
    }
    assert!(
        merger_doc["paths"]["/v1/videos/{id}/stats"]["get"]["security"].is_null(),
        "per-video counts stay public"
    );
    for code in ["400", "401", "403", "429", "503", "504"] {
        let r = &analytics["responses"][code];
        assert!(r["description"].is_string(), "{code}: {analytics}");
        assert!(
            r["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .unwrap_or("")
                .ends_with("Problem"),
            "{code}: {r}"
        );
    }
    // the dashboard's files are gzipped for browsers that ask
    let r = http
        .get(format!("http://{}/dashboard/vendor/world-map.json", m.http))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers().get("content-encoding").map(|v| v.to_str().unwrap()),
        Some("gzip")
    );
    let gz = r.bytes().await.unwrap().len();
    assert!((50_000..300_000).contains(&gz), "{gz} bytes gzipped");
    let events = &edge_doc["paths"]["/v1/events"]["post"];
    assert!(
        events["requestBody"]["content"]["text/plain"]["schema"]["$ref"]
            .as_str()
            .unwrap()
            .ends_with("Beacon"),
        "{events}"
    );
    assert!(edge_doc["components"]["schemas"]["BeaconEvent"]["properties"]["token"].is_object());
}
