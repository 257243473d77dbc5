//! `ticketctl` as an operator uses it: the real binary drives a real 3-node dev cluster
//! (`dev up`, `dev env`, catalog and on-sale commands, `dev kill`, `dev start`, `dev down`).
//! Needs `ticketd` next to `ticketctl`: `cargo build --bins` (scripts/test.sh does it).

use client::dev::DevCluster;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const TICKETCTL: &str = env!("CARGO_BIN_EXE_ticketctl");

/// Kills whatever the dev cluster in `dir` still runs, by pid, when the test ends.
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(c) = DevCluster::load(&self.0) {
            c.kill_all();
        }
    }
}

struct Ctl {
    dir: PathBuf,
    urls: String,
    key: String,
}

fn run(args: &[&str], env: Option<&Ctl>) -> Output {
    let mut cmd = Command::new(TICKETCTL);
    cmd.args(args)
        .env_remove("TICKETLEDGER_URL")
        .env_remove("TICKETLEDGER_KEY");
    if let Some(c) = env {
        cmd.env("TICKETLEDGER_URL", &c.urls)
            .env("TICKETLEDGER_KEY", &c.key);
    }
    cmd.output().expect("running ticketctl")
}

/// Run, require success, return stdout.
fn ok(args: &[&str], env: Option<&Ctl>) -> String {
    let out = run(args, env);
    assert!(
        out.status.success(),
        "ticketctl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(args: &[&str], env: &Ctl) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(&all, Some(env))).unwrap()
}

fn status(ctl: &Ctl) -> api::ClusterStatus {
    serde_json::from_value(json(&["cluster", "status"], ctl)).unwrap()
}

fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < deadline,
            "not within {deadline:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dev_up(dir: &Path) -> Ctl {
    let d = dir.to_str().unwrap();
    let out = ok(&["dev", "up", "--nodes", "3", "--dir", d], None);
    // The documented output: one line per node, then the admin key.
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for (i, line) in lines[..3].iter().enumerate() {
        assert!(
            line.starts_with(&format!("node {} http=127.0.0.1:", i + 1))
                && line.contains(" grpc=127.0.0.1:"),
            "{line}"
        );
    }
    let key = lines[3]
        .strip_prefix("admin_key=")
        .expect("admin_key line")
        .to_string();
    for id in 1..=3 {
        assert!(dir.join(id.to_string()).join("ticketd.pid").is_file());
        assert!(dir.join(id.to_string()).join("ticketd.log").is_file());
    }
    // `dev env` gives the same key and every node's URL.
    let env = ok(&["dev", "env", "--dir", d], None);
    let urls = env
        .lines()
        .find_map(|l| l.strip_prefix("export TICKETLEDGER_URL="))
        .expect("URL line")
        .to_string();
    assert!(
        env.contains(&format!("export TICKETLEDGER_KEY={key}")),
        "{env}"
    );
    Ctl {
        dir: dir.to_path_buf(),
        urls,
        key,
    }
}

#[test]
fn ticketctl_runs_a_dev_cluster_and_an_on_sale() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let _kill = KillOnDrop(dir.clone());
    let ctl = dev_up(&dir);
    let d = ctl.dir.to_str().unwrap();

    let s = status(&ctl);
    assert_eq!(s.voters, vec![1, 2, 3]);
    assert!(s.leader.is_some());
    // The human table has a row per node.
    let table = ok(&["cluster", "status"], Some(&ctl));
    assert_eq!(table.lines().count(), 5, "{table}");

    // A second `dev up` on the same directory is refused with a way out.
    let again = run(&["dev", "up", "--dir", d], None);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("dev start"));

    // An on-sale from the command line.
    let csv = ctl.dir.join("seats.csv");
    std::fs::write(&csv, "section,row,seats\nA,1,10\nA,2,10\nFloor,,50\n").unwrap();
    let venue = json(
        &[
            "venue",
            "create",
            "--name",
            "Hall",
            "--file",
            csv.to_str().unwrap(),
        ],
        &ctl,
    );
    assert_eq!(
        (venue["seats"].as_u64(), venue["ga_capacity"].as_u64()),
        (Some(20), Some(50))
    );
    let venue_id = venue["venue_id"].as_str().unwrap();
    let event = json(
        &["event", "create", "--name", "Show", "--category", "music"],
        &ctl,
    );
    let event_id = event["event_id"].as_str().unwrap();
    let perf = json(
        &[
            "performance",
            "create",
            "--event",
            event_id,
            "--venue",
            venue_id,
            "--starts-at",
            "2099-01-01T20:00:00Z",
            "--price",
            "A=5000",
            "--price",
            "Floor=2000",
            "--max-seats-per-order",
            "4",
        ],
        &ctl,
    );
    let p = perf["performance_id"].as_str().unwrap();
    assert_eq!(json(&["performance", "open", p], &ctl)["status"], "on_sale");
    let hold = json(
        &["hold", "--performance", p, "--seat", "A:1:1", "A:1:2"],
        &ctl,
    );
    let hold_id = hold["hold_id"].as_str().unwrap();
    assert_eq!(hold["amount_minor"], 10_000);

    // The same seat again: exit status 1 and the problem's code on stderr, no backtrace.
    let taken = run(&["hold", "--performance", p, "--seat", "A:1:1"], Some(&ctl));
    assert_eq!(taken.status.code(), Some(1));
    let err = String::from_utf8_lossy(&taken.stderr);
    assert!(err.contains("409 seat_unavailable"), "{err}");
    assert!(!err.contains("backtrace"), "{err}");

    let booking = json(&["confirm", hold_id, "--payment-ref", "pay-1"], &ctl);
    let booking_id = booking["booking_id"].as_str().unwrap();
    let ticket = booking["tickets"][0]["ticket_id"].as_str().unwrap();
    let refunded = json(&["refund", booking_id, "--ticket", ticket], &ctl);
    assert_eq!(refunded["amount_minor"], 5000);
    let shown = json(&["performance", "show", p], &ctl);
    assert_eq!(
        (
            shown["totals"]["sold"].as_u64(),
            shown["revenue_minor"].as_u64()
        ),
        (Some(1), Some(5000))
    );

    // kill -9 of the leader: another node leads; `dev start` brings it back and it catches up.
    let leader = s.leader.unwrap();
    ok(
        &["dev", "kill", "--dir", d, "--node", &leader.to_string()],
        None,
    );
    assert!(!dir.join(leader.to_string()).join("ticketd.pid").exists());
    wait_for(
        "a new leader",
        Duration::from_secs(15),
        || matches!(status(&ctl).leader, Some(l) if l != leader),
    );
    ok(&["hold", "--performance", p, "--seat", "A:2:1"], Some(&ctl));
    ok(
        &["dev", "start", "--dir", d, "--node", &leader.to_string()],
        None,
    );
    wait_for(
        "every node applied the same state",
        Duration::from_secs(30),
        || {
            let s = status(&ctl);
            s.nodes.iter().all(|n| n.role != "unreachable")
                && s.nodes.windows(2).all(|w| {
                    (w[0].applied_index, &w[0].state_hash) == (w[1].applied_index, &w[1].state_hash)
                })
        },
    );

    // `dev down` stops every node; `dev start` restarts the cluster on its data; `--purge` removes it.
    ok(&["dev", "down", "--dir", d], None);
    let ps = ok(&["dev", "ps", "--dir", d], None);
    assert_eq!(ps.matches("stopped").count(), 3, "{ps}");
    ok(&["dev", "start", "--dir", d], None);
    wait_for(
        "the restarted cluster has a leader",
        Duration::from_secs(20),
        || {
            run(&["--json", "cluster", "status"], Some(&ctl))
                .status
                .success()
                && status(&ctl).leader.is_some()
        },
    );
    assert_eq!(
        json(&["booking", "show", booking_id], &ctl)["refunded_minor"],
        5000
    );
    ok(&["dev", "down", "--dir", d, "--purge"], None);
    assert!(!dir.exists());
}

#[test]
fn dev_up_failures_are_clear_and_leave_nothing_running() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let d = dir.to_str().unwrap();
    // A taken port under --base-port is named before anything starts.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = run(&["dev", "up", "--dir", d, "--base-port", &port], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("port {port}")) && err.contains("taken"),
        "{err}"
    );
    // A ticketd that exits at once: the error says so, with its exit status.
    let out = Command::new(TICKETCTL)
        .args(["dev", "up", "--nodes", "2", "--dir", d])
        .env("TICKETD_BIN", "/bin/false")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did not start") && err.contains("exited with"),
        "{err}"
    );
    assert!(
        !dir.join("cluster.json").exists(),
        "a failed start leaves no cluster behind"
    );
}

/// Run `ticketctl demo` with `args` on a cluster of its own in a temp dir (killed on
/// drop); insists that it succeeded, and returns its stderr and its report.json.
fn run_demo(
    args: &[&str],
) -> (
    String,
    serde_json::Value,
    std::path::PathBuf,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cluster");
    let report = dir.path().join("report");
    let _kill = KillOnDrop(data.clone());
    let out = Command::new(TICKETCTL)
        .arg("demo")
        .args(args)
        .arg("--dir")
        .arg(&data)
        .arg("--report")
        .arg(&report)
        .env_remove("TICKETLEDGER_URL")
        .env_remove("TICKETLEDGER_KEY")
        .output()
        .expect("running ticketctl demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr (tail):\n{}",
        &stderr[stderr.len().saturating_sub(4000)..]
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    let checks = json["checks"].as_array().unwrap();
    // The money checks of the payments service and provider are among them.
    assert!(checks.len() >= 8, "{checks:?}");
    assert!(
        checks
            .iter()
            .any(|c| c["check"].as_str().unwrap().contains("the provider kept")),
        "{checks:?}"
    );
    assert!(checks.iter().all(|c| c["ok"] == true), "{checks:?}");
    assert!(json["summary"]["checkouts"].as_u64().unwrap() > 0);
    (stderr, json, report, dir)
}

/// The demo end to end, small: waiting room, signups, holds, payments, a `kill -9` of the
/// leader halfway, and every check of the summary passing (the report says which ran).
#[test]
fn the_demo_sells_out_through_a_leader_kill_and_every_check_passes() {
    let (stderr, json, report, _dir) =
        run_demo(&["--seats", "400", "--buyers", "3000", "--kill-leader"]);
    assert!(
        stderr.contains("--kill-leader: kill -9 of node"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hold and release over HTTP/JSON"),
        "{stderr}"
    );
    assert_eq!(json["summary"]["seats"], 400);
    assert!(json["series"].as_array().unwrap().len() > 2);
    assert!(
        std::fs::read_to_string(report.join("sales.svg"))
            .unwrap()
            .contains("<polyline")
    );
}

/// The buyers over the gRPC API (the default is HTTP): the same sale, every check passing.
#[test]
fn the_demo_sells_out_with_the_buyers_over_grpc() {
    let (stderr, json, _, _dir) =
        run_demo(&["--seats", "200", "--buyers", "1500", "--protocol", "grpc"]);
    assert!(stderr.contains("hold and release over gRPC"), "{stderr}");
    assert!(json["summary"]["holds"].as_u64().unwrap() > 0);
}

/// gRPC buyers need the demo's own cluster: on one given by --url the demo says so before
/// it touches anything.
#[test]
fn the_demo_refuses_grpc_buyers_on_a_cluster_given_by_url() {
    let out = Command::new(TICKETCTL)
        .args([
            "--url",
            "http://127.0.0.1:9",
            "--key",
            "k",
            "demo",
            "--protocol",
            "grpc",
        ])
        .output()
        .expect("running ticketctl demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--protocol grpc needs the demo's own cluster"),
        "{stderr}"
    );
}

/// The same cluster, another principal's key.
fn as_key(ctl: &Ctl, key: &str) -> Ctl {
    Ctl {
        dir: ctl.dir.clone(),
        urls: ctl.urls.clone(),
        key: key.to_string(),
    }
}

#[test]
fn ticketctl_serves_organizers_and_buyers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let _kill = KillOnDrop(dir.clone());
    let admin = dev_up(&dir);
    let key_of = |role: &str| {
        json(
            &["api-key", "create", "--name", role, "--role", role],
            &admin,
        )["key"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let org = as_key(&admin, &key_of("organizer"));
    let svc = as_key(&admin, &key_of("service"));

    // The organizer's catalog: a venue from a JSON seat file, an event (then renamed), and a
    // performance with a waiting room from a JSON file, opened with the committed seed.
    let venue_file = dir.join("venue.json");
    std::fs::write(
        &venue_file,
        r#"{"name":"ignored","sections":[{"name":"A","rows":[{"label":"1","seats":8}]},{"name":"Floor","capacity":20}]}"#,
    )
    .unwrap();
    let vf = venue_file.to_str().unwrap();
    let venue = json(&["venue", "create", "--name", "Hall", "--file", vf], &org);
    assert_eq!(venue["seats"], 8);
    let event = json(
        &["event", "create", "--name", "Show", "--category", "music"],
        &org,
    );
    let e = event["event_id"].as_str().unwrap();
    let renamed = json(&["event", "update", e, "--name", "Show II"], &org);
    assert_eq!(
        (renamed["name"].as_str(), renamed["category"].as_str()),
        (Some("Show II"), Some("music"))
    );
    let refused = run(&["event", "update", e, "--name", "x"], Some(&svc));
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403 forbidden"));
    let seed = [7u8; 32];
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let perf_file = dir.join("perf.json");
    let spec = serde_json::json!({
        "venue_id": venue["venue_id"], "starts_at": "2099-01-01T20:00:00Z", "on_sale_at": 0,
        "hold_ttl_secs": 600,
        "prices": [{"section": "A", "amount_minor": 5000, "currency": "EUR"},
                   {"section": "Floor", "amount_minor": 2000, "currency": "EUR"}],
        "waiting_room": {"admission_rate_per_sec": 50, "admission_ttl_secs": 600,
                         "seed_commitment": hex(blake3::hash(&seed).as_bytes())}
    });
    std::fs::write(&perf_file, spec.to_string()).unwrap();
    let pf = perf_file.to_str().unwrap();
    let perf = json(&["performance", "create", "--event", e, "--file", pf], &org);
    let p = perf["performance_id"].as_str().unwrap().to_string();

    // A buyer signs up (the token comes as an export line), joins the pre-queue, and once
    // the sale opens waits for admission, holds, and after the service confirms, lists it.
    let anon = as_key(&admin, "");
    let mut signup = Command::new(TICKETCTL);
    signup
        .args(["signup", "--email", "ana@example.com", "--name", "Ana"])
        .env("TICKETLEDGER_URL", &anon.urls)
        .env_remove("TICKETLEDGER_KEY")
        .env("TICKETLEDGER_PASSWORD", "correct horse");
    let out = signup.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("export TICKETLEDGER_KEY="))
        .unwrap_or_else(|| panic!("no export line in {text}"));
    let buyer = as_key(&admin, token);
    let joined = json(&["queue", "join", &p], &buyer);
    assert!(joined.get("position").is_none(), "pre-queue: {joined}");
    let q = joined["queue_id"].as_str().unwrap().to_string();
    ok(
        &["performance", "open", &p, "--seed", &hex(&seed)],
        Some(&org),
    );
    let admitted = json(
        &["queue", "status", &q, "--wait", "--wait-secs", "30"],
        &buyer,
    );
    assert_eq!(admitted["state"], "admitted", "{admitted}");
    let hold = json(
        &["hold", "--performance", &p, "--seat", "A:1:1", "A:1:2"],
        &buyer,
    );
    let booking = json(
        &[
            "confirm",
            hold["hold_id"].as_str().unwrap(),
            "--payment-ref",
            "pay-1",
        ],
        &svc,
    );
    let b = booking["booking_id"].as_str().unwrap();
    let mine = json(&["bookings"], &buyer);
    assert_eq!(mine["bookings"].as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(mine["bookings"][0]["booking_id"], b);
    assert!(ok(&["bookings"], Some(&buyer)).contains(b));
    let of_perf = json(&["bookings", "--performance", &p], &svc);
    assert_eq!(of_perf["bookings"].as_array().unwrap().len(), 1);
    let not_yours = run(&["bookings", "--performance", &p], Some(&buyer));
    assert!(String::from_utf8_lossy(&not_yours.stderr).contains("403 forbidden"));

    // At the door: a code checks in once; the organizer blocks a seat and reads its report.
    let code = booking["tickets"][0]["code"].as_str().unwrap();
    let done = ok(&["check-in", "--performance", &p, code], Some(&org));
    assert!(done.starts_with("checked in"), "{done}");
    let twice = run(&["check-in", "--performance", &p, code], Some(&org));
    assert_eq!(twice.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&twice.stderr).contains("409 ticket_used"));
    assert_eq!(
        ok(
            &["block", "--performance", &p, "--seat", "A:1:8"],
            Some(&org)
        )
        .trim(),
        "blocked 1 seats"
    );
    let report = json(&["report", &p], &org);
    assert_eq!(
        (
            report["tickets_sold"].as_u64(),
            report["tickets_checked_in"].as_u64(),
            report["revenue_minor"].as_u64(),
            report["totals"]["blocked"].as_u64()
        ),
        (Some(2), Some(1), Some(10_000), Some(1))
    );
    let table = ok(&["report", &p], Some(&org));
    assert!(table.contains("tickets sold=2"), "{table}");
    let csv = ok(&["report", &p, "--csv"], Some(&org));
    assert!(csv.starts_with("kind,key,capacity"), "{csv}");
    assert!(csv.contains(&format!("total,{p},28,")), "{csv}");
    let denied = run(&["report", &p], Some(&buyer));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("403 forbidden"));
    ok(
        &["dev", "down", "--dir", dir.to_str().unwrap(), "--purge"],
        None,
    );
}
