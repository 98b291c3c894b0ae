//! Keel answers etcdctl exactly as etcd does: each scenario is a list of etcdctl commands run
//! against a fresh Keel and a fresh etcd 3.4 (with the same flags), and their outputs must be
//! equal once what legitimately differs is taken out (cluster and member ids, raft term, log
//! lines).
//!
//! Guards against: any difference a user of etcdctl could see in revisions, versions, keys,
//! values, counts, `more`, error messages or exit status.

mod support;

use serde_json::Value;
use support::compare::{check_against_etcd, Step};
use support::{etcdctl_with_stdin, Etcd, Keel, Output};

/// A command written as on a shell line; `"..."` quotes (so `""` is the empty key).
fn cmd(line: &str) -> Step {
    Step::new(split(line))
}

/// `etcdctl txn` (plus `flags`) reading `input`: compares, blank line, success ops, blank line,
/// failure ops, blank line.
fn txn(flags: &str, input: &str) -> Step {
    cmd(&format!("txn {flags}")).stdin(input)
}

fn restart_keel() -> Step {
    Step::restart_keel()
}

fn split(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current: Option<String> = None;
    let mut quoted = false;
    for character in line.chars() {
        match character {
            '"' => {
                quoted = !quoted;
                current.get_or_insert_with(String::new);
            }
            ' ' if !quoted => args.extend(current.take()),
            other => current.get_or_insert_with(String::new).push(other),
        }
    }
    assert!(!quoted, "unbalanced quotes in {line:?}");
    args.extend(current);
    args
}

/// What of an etcdctl run must be equal on both servers.
#[derive(Debug, PartialEq)]
struct Seen {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Takes out what differs between any two clusters: ids and raft term in headers, and client
/// log lines (etcdctl logs each failed attempt as JSON with a timestamp; the final
/// `Error: ...` line stays).
fn normalize(output: &Output) -> Seen {
    let stdout = output
        .stdout
        .lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(mut value) if value.is_object() || value.is_array() => {
                erase_ids(&mut value);
                value.to_string()
            }
            _ => erase_field_ids(line),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let stderr = output
        .stderr
        .lines()
        .filter(|line| !line.starts_with("{\"level\""))
        .collect::<Vec<_>>()
        .join("\n");
    Seen {
        status: output.status,
        stdout,
        stderr,
    }
}

fn erase_ids(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields.iter_mut() {
                match name.as_str() {
                    "cluster_id" | "member_id" | "raft_term" => *field = Value::from(0),
                    _ => erase_ids(field),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(erase_ids),
        _ => {}
    }
}

/// The `fields` output format prints `"ClusterID" : 123` lines.
fn erase_field_ids(line: &str) -> String {
    for name in ["\"ClusterID\"", "\"MemberID\"", "\"RaftTerm\""] {
        if line.starts_with(name) {
            return format!("{name} : 0");
        }
    }
    line.to_owned()
}

/// Runs `steps` on a fresh etcd and a fresh Keel, both started with `flags`, and fails listing
/// every step whose answers differ.
fn check(flags: &[&str], steps: &[Step]) {
    let raw = |seen: &Seen| format!("{}\n{}", seen.stdout, seen.stderr);
    check_against_etcd(flags, steps, normalize, raw, |_: &Keel| {});
}

fn puts(pairs: &[(&str, &str)]) -> Vec<Step> {
    pairs
        .iter()
        .map(|(key, value)| cmd(&format!("put \"{key}\" \"{value}\"")).expect("OK"))
        .collect()
}

#[test]
fn put_flags_and_their_errors_match_etcd() {
    check(
        &[],
        &[
            cmd("put foo bar").expect("OK"),
            cmd("put foo bar2 --prev-kv -w json").expect("prev_kv"),
            cmd("put foo baz --prev-kv"),
            cmd("put new v --prev-kv -w json"),
            cmd("put foo --ignore-value --prev-kv -w json"),
            // etcdctl refuses this itself; the server's "value is provided" is unreachable.
            cmd("put foo v --ignore-value"),
            cmd("put missing --ignore-value").expect("key not found"),
            cmd("put foo v3 --ignore-lease -w json"),
            cmd("put missing v --ignore-lease").expect("key not found"),
            cmd("put foo v --lease=123").expect("requested lease not found"),
            cmd("put foo v --lease=123 --ignore-lease").expect("lease is provided"),
            cmd("put \"\" v").expect("key is not provided"),
            cmd("put \"\" v -w json"),
            cmd("put \"key with spaces\" \"value with spaces\""),
            cmd("put empty \"\"").expect("OK"),
            cmd("get \"\" --prefix -w json").expect("\"count\":4"),
            cmd("get \"\" --prefix"),
        ],
    );
}

#[test]
fn get_of_keys_ranges_prefixes_and_limits_matches_etcd() {
    let mut steps = puts(&[
        ("a", "1"),
        ("b", "2"),
        ("c", "3"),
        ("foo", "f"),
        ("foo/bar", "fb"),
        ("foo/baz", "fz"),
        ("fop", "p"),
        ("zoo", "z"),
        ("\u{7f}", "del"),
    ]);
    steps.extend([
        cmd("get a -w json").expect("\"count\":1"),
        cmd("get a"),
        cmd("get nope -w json"),
        cmd("get nope"),
        cmd("get a c -w json").expect("\"count\":2"),
        cmd("get c a -w json"),
        cmd("get a a -w json"),
        cmd("get foo --prefix -w json").expect("\"count\":3"),
        cmd("get foo/ --prefix"),
        cmd("get c --from-key -w json"),
        cmd("get \"\" --prefix -w json").expect("\"count\":9"),
        cmd("get \"\" --from-key -w json"),
        cmd("get \"\" -w json").expect("key is not provided"),
        cmd("get \"\"").expect("key is not provided"),
        cmd("get \"\" --prefix --limit 2 -w json").expect("\"more\":true"),
        cmd("get \"\" --prefix --limit 9 -w json"),
        cmd("get \"\" --prefix --limit 10 -w json"),
        cmd("get foo --prefix --limit 1"),
        cmd("get a z --limit 3 -w json"),
        cmd("get \"\" --prefix --limit -1 -w json"),
        cmd("get \"\" --prefix --keys-only -w json"),
        cmd("get \"\" --prefix --keys-only"),
        cmd("get foo --prefix --print-value-only"),
        cmd("get foo --prefix --keys-only --print-value-only"),
        cmd("get foo --consistency=s -w json"),
        cmd("get foo --prefix --consistency=s"),
        cmd("get foo --prefix --hex -w json"),
        cmd("get foo --prefix --hex"),
        cmd("get foo -w fields"),
        cmd("get foo -w table"),
    ]);
    check(&[], &steps);
}

#[test]
fn sorted_gets_match_etcd_including_ties() {
    // Versions, create and mod revisions and values all differ in order from the keys, and
    // several keys tie on each target, so both the order and the tie-breaking show.
    let mut steps = puts(&[
        ("k3", "v1"),
        ("k1", "v3"),
        ("k2", "v2"),
        ("k5", "v1"),
        ("k4", "v9"),
        ("k1", "v0"),
        ("k2", "v2"),
        ("k1", "v5"),
        ("k6", "v3"),
    ]);
    for order in ["", "--order=ASCEND", "--order=DESCEND"] {
        for target in [
            "",
            "--sort-by=KEY",
            "--sort-by=VERSION",
            "--sort-by=CREATE",
            "--sort-by=MODIFY",
            "--sort-by=VALUE",
        ] {
            steps.push(cmd(&format!("get k --prefix {order} {target} -w json")));
            steps.push(cmd(&format!(
                "get k --prefix {order} {target} --limit 3 -w json"
            )));
        }
    }
    steps.push(cmd(
        "get k --prefix --order=DESCEND --sort-by=VALUE --keys-only",
    ));
    steps.push(cmd("get k1 k5 --order=DESCEND --sort-by=VERSION --limit 2"));
    steps.push(cmd("get k --prefix --order=SIDEWAYS").expect("bad sort order"));
    steps.push(cmd("get k --prefix --sort-by=SIZE").expect("bad sort target"));
    check(&[], &steps);
}

#[test]
fn sorted_gets_over_many_tied_keys_match_etcd() {
    // More keys than Go's sort handles by insertion sort (12), most of them tied.
    let mut pairs = Vec::new();
    for i in 0..40 {
        pairs.push((format!("t{:02}", (i * 7) % 40), format!("v{}", i % 3)));
    }
    for i in 0..10 {
        pairs.push((format!("t{:02}", (i * 11) % 40), format!("w{}", i % 2)));
    }
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    let mut steps = puts(&pairs);
    for order in ["--order=ASCEND", "--order=DESCEND"] {
        for target in ["VERSION", "VALUE", "CREATE", "MODIFY", "KEY"] {
            steps.push(cmd(&format!(
                "get t --prefix {order} --sort-by={target} --keys-only"
            )));
        }
    }
    check(&[], &steps);
}

#[test]
fn historical_reads_match_etcd() {
    let mut steps = puts(&[("a", "1"), ("b", "1"), ("a", "2")]);
    steps.extend([
        cmd("del b").expect("1"),
        cmd("put b again").expect("OK"),
        cmd("put c 1").expect("OK"),
    ]);
    for revision in 0..=9 {
        steps.push(cmd(&format!("get \"\" --prefix --rev {revision} -w json")));
        steps.push(cmd(&format!("get b --rev {revision}")));
    }
    steps.push(cmd("get a --rev 100").expect("future revision"));
    steps.push(cmd("get a --rev -1 -w json"));
    check(&[], &steps);
}

#[test]
fn deletes_match_etcd() {
    let keys: Vec<(&str, &str)> = ["a", "b", "c", "d", "foo", "foo/1", "foo/2", "x", "y", "z"]
        .iter()
        .map(|key| (*key, "v"))
        .collect();
    let mut steps = puts(&keys);
    steps.extend([
        cmd("del a -w json").expect("\"deleted\":1"),
        cmd("del a -w json"),
        cmd("del a"),
        cmd("del nope --prev-kv -w json"),
        cmd("del b d --prev-kv -w json").expect("\"deleted\":2"),
        cmd("del d c"),
        cmd("del foo --prefix --prev-kv -w json").expect("\"deleted\":3"),
        cmd("del foo --prefix"),
        cmd("del y --from-key --prev-kv").expect("2"),
        cmd("del \"\"").expect("key is not provided"),
        cmd("del \"\" -w json"),
        cmd("get \"\" --prefix -w json"),
        cmd("put a back").expect("OK"),
        cmd("get a -w json").expect("\"version\":1"),
        cmd("del \"\" --prefix -w json").expect("\"deleted\":3"),
        cmd("del \"\" --from-key -w json"),
        cmd("get \"\" --prefix -w json"),
    ]);
    check(&[], &steps);
}

#[test]
fn txn_compares_and_branches_match_etcd() {
    let mut steps = puts(&[("foo", "bar"), ("k", "v"), ("n", "1"), ("n", "2")]);
    steps.extend([
        // Each target, each operator, a success and a failure.
        txn(
            "-w json",
            "value(\"foo\") = \"bar\"\n\nput t1 v1\nget t1\nget foo\n\nput t2 v2\n\n",
        )
        .expect("\"succeeded\":true"),
        txn(
            "",
            "value(\"foo\") = \"nope\"\n\nput t1 x\n\nput t2 v2\nget t2\n\n",
        )
        .expect("FAILURE"),
        txn("-w json", "value(\"foo\") != \"baz\"\n\nget foo\n\n\n"),
        txn("-w json", "value(\"foo\") > \"bas\"\n\nget foo\n\nget k\n\n"),
        txn("-w json", "value(\"foo\") < \"bas\"\n\nget foo\n\nget k\n\n"),
        txn("-w json", "version(\"n\") = \"2\"\n\nget n\n\nget k\n\n"),
        txn("-w json", "version(\"n\") > \"1\"\n\nget n\n\nget k\n\n"),
        txn("-w json", "version(\"n\") < \"2\"\n\nget n\n\nget k\n\n"),
        txn("-w json", "version(\"n\") != \"2\"\n\nget n\n\nget k\n\n"),
        txn("-w json", "create(\"n\") = \"4\"\n\nget n\n\nget k\n\n"),
        txn("-w json", "create(\"n\") > \"3\"\n\nget n\n\nget k\n\n"),
        txn("-w json", "create(\"n\") < \"3\"\n\nget n\n\nget k\n\n"),
        txn("-w json", "mod(\"n\") = \"5\"\n\nget n\n\nget k\n\n"),
        txn("-w json", "mod(\"foo\") > \"0\"\n\nget foo\n\n\n"),
        txn("-w json", "mod(\"foo\") < \"2\"\n\nget foo\n\nget k\n\n"),
        txn("-w json", "mod(\"foo\") != \"2\"\n\nget foo\n\nget k\n\n"),
        // Compares on a missing key: versions and revisions are 0, a value never matches.
        txn("-w json", "create(\"missing\") = \"0\"\n\nput created yes\n\n\n"),
        txn("-w json", "version(\"missing\") = \"0\"\n\nget created\n\n\n"),
        txn("-w json", "mod(\"missing\") < \"1\"\n\nget created\n\n\n"),
        txn("-w json", "value(\"missing\") = \"\"\n\nget created\n\nget k\n\n"),
        txn("-w json", "value(\"missing\") != \"x\"\n\nget created\n\nget k\n\n"),
        // Several compares: all must hold.
        txn(
            "-w json",
            "value(\"foo\") = \"bar\"\nversion(\"n\") = \"2\"\nmod(\"k\") = \"3\"\n\nget k\n\nget n\n\n",
        ),
        txn(
            "-w json",
            "value(\"foo\") = \"bar\"\nversion(\"n\") = \"9\"\n\nget k\n\nget n\n\n",
        ),
        // Writes then reads of the same key inside one transaction.
        txn("-w json", "\nput same 1\nget same\n\n\n").expect("ResponsePut"),
        txn("-w json", "\ndel same\nget same\n\n\n"),
        txn("", "\nput p1 a\nput p2 b\nget p --prefix\ndel q\n\n\n").expect("SUCCESS"),
        txn("-w json", "\nput p3 c\nget p --prefix --limit 1\n\n\n"),
        txn("-w json", "\nget p --prefix --rev 2\nget p --prefix --rev 99\n\n\n")
            .expect("future revision"),
        txn("-w json", "\nget foo --keys-only\nget n --rev 4\n\n\n"),
        // Read-only, empty, failure-only transactions.
        txn("-w json", "\n\n\n"),
        txn("", "\n\n\n"),
        txn("-w json", "value(\"foo\") = \"nope\"\n\n\n\n"),
        txn("-w json", "value(\"foo\") = \"nope\"\n\n\ndel foo --prev-kv\n\n"),
        txn("-w json", "\nput foo again --prev-kv\n\n\n"),
        // Errors inside a transaction.
        txn("", "\nput \"\" x\n\n\n").expect("key is not provided"),
        txn("", "value(\"\") = \"x\"\n\nget foo\n\n\n").expect("key is not provided"),
        txn("", "\nput ghost --ignore-value\n\n\n").expect("key not found"),
        txn("", "\nput foo v --lease=123\n\n\n").expect("requested lease not found"),
        txn("", "\nput dup 1\nput dup 2\n\n\n").expect("duplicate key"),
        txn("", "\nput dup 1\ndel dup\n\n\n").expect("duplicate key"),
        txn("", "\ndel a z\nput k 1\n\n\n").expect("duplicate key"),
        txn("-w json", "\nput dup 1\n\nput dup 2\n\n"),
        txn("-w json", "\ndel a --from-key\nput b 1\n\n\n"),
        // etcd checks every put of a writing transaction before any read's revision.
        txn("", "\nget foo --rev 99\nput foo v --lease=123\n\n\n").expect("lease not found"),
        txn("", "\nget foo --rev 99\nput ghost v --ignore-lease\n\n\n").expect("key not found"),
        txn("", "\nget foo --rev -1\nput foo v\n\n\n"),
        cmd("get \"\" --prefix -w json"),
    ]);
    check(&[], &steps);
}

#[test]
fn txn_operation_limit_matches_etcd() {
    let steps = [
        txn("", "\nput a 1\nput b 1\nput c 1\nput d 1\n\n\n").expect("SUCCESS"),
        txn("", "\nput a 1\nput b 1\nput c 1\nput d 1\nput e 1\n\n\n")
            .expect("too many operations"),
        txn("", "\n\nput a 1\nput b 1\nput c 1\nput d 1\nput e 1\n\n")
            .expect("too many operations"),
        txn(
            "",
            "value(\"a\") = \"1\"\nvalue(\"b\") = \"1\"\nvalue(\"c\") = \"1\"\nvalue(\"d\") = \"1\"\nvalue(\"e\") = \"1\"\n\n\n\n",
        )
        .expect("too many operations"),
        txn(
            "-w json",
            "value(\"a\") = \"1\"\nvalue(\"b\") = \"1\"\nvalue(\"c\") = \"1\"\nvalue(\"d\") = \"1\"\n\nget a\nget b\nget c\nget d\n\nput x 1\nput y 1\nput z 1\nput w 1\n\n",
        ),
        txn("", "\nget a\nget b\nget c\nget d\nget e\n\n\n").expect("too many operations"),
        cmd("get \"\" --prefix -w json"),
    ];
    check(&["--max-txn-ops", "4"], &steps);
}

#[test]
fn compaction_and_reads_around_it_match_etcd() {
    let mut steps = puts(&[("a", "1"), ("b", "1"), ("a", "2"), ("a", "3"), ("b", "2")]);
    steps.extend([
        cmd("del b").expect("1"),
        cmd("put c 1").expect("OK"),
        cmd("compact 3").expect("compacted revision 3"),
        cmd("compact 3").expect("required revision has been compacted"),
        cmd("compact 2").expect("required revision has been compacted"),
        cmd("compact 100").expect("required revision is a future revision"),
        cmd("compact 3 -w json"),
        cmd("get a --rev 2").expect("required revision has been compacted"),
        cmd("get a --rev 2 -w json"),
        cmd("get \"\" --prefix --rev 3 -w json").expect("\"count\":2"),
        cmd("get \"\" --prefix --rev 4 -w json"),
        cmd("get a --rev 9").expect("future revision"),
        cmd("get \"\" --prefix --rev 8 -w json"),
        txn("-w json", "\nget a --rev 2\n\n\n").expect("compacted"),
        txn("-w json", "\nget a --rev 3\n\n\n"),
        cmd("compact 6 --physical").expect("compacted revision 6"),
        cmd("get b --rev 6 -w json"),
        cmd("get b --rev 7 -w json"),
        cmd("get \"\" --prefix --rev 5").expect("compacted"),
        cmd("get \"\" --prefix -w json"),
        cmd("compact 8").expect("compacted revision 8"),
        cmd("get \"\" --prefix --rev 8 -w json"),
        cmd("compact 8").expect("compacted"),
        cmd("compact 9").expect("future revision"),
        cmd("put a 4").expect("OK"),
        cmd("compact 9").expect("compacted revision 9"),
        cmd("get a -w json"),
        cmd("get a --rev 8").expect("compacted"),
        txn("-w json", "\nget a --rev -1\n\n\n"),
        cmd("get a --rev -1 -w json"),
        // A key deleted and created again across the compacted revision.
        cmd("put d 1").expect("OK"),
        cmd("del d").expect("1"),
        cmd("put d 2").expect("OK"),
        cmd("put d 3").expect("OK"),
        cmd("compact 12").expect("compacted revision 12"),
        cmd("get d --rev 12 -w json"),
        cmd("get d --rev 13 -w json"),
        cmd("compact 13").expect("compacted revision 13"),
        cmd("get d --rev 13 -w json"),
        cmd("get \"\" --prefix --rev 13 --limit 1 -w json").expect("\"more\":true"),
        cmd("put d 4 --prev-kv -w json").expect("prev_kv"),
        cmd("del d --prev-kv -w json"),
        cmd("compact 15").expect("compacted revision 15"),
        cmd("get \"\" --prefix --rev 15 -w json"),
        cmd("put d 5 -w json"),
        cmd("get d -w json").expect("\"version\":1"),
    ]);
    check(&[], &steps);
}

#[test]
fn history_read_after_a_keel_restart_matches_etcd() {
    let mut steps = puts(&[("a", "1"), ("b", "1"), ("a", "2"), ("c", "1")]);
    steps.extend([
        cmd("del b").expect("1"),
        cmd("put b 2").expect("OK"),
        cmd("put a 3").expect("OK"),
        cmd("del c").expect("1"),
        restart_keel(),
        cmd("get \"\" --prefix -w json").expect("\"count\":2"),
    ]);
    for revision in 1..=9 {
        steps.push(cmd(&format!("get \"\" --prefix --rev {revision} -w json")));
    }
    steps.extend([
        cmd("put a 4 --prev-kv -w json").expect("\"version\":3"),
        cmd("put c 2 -w json"),
        cmd("compact 6").expect("compacted revision 6"),
        restart_keel(),
        cmd("compact 6").expect("compacted"),
        cmd("get a --rev 5").expect("compacted"),
    ]);
    for revision in 6..=11 {
        steps.push(cmd(&format!("get \"\" --prefix --rev {revision} -w json")));
    }
    steps.extend([
        cmd("put b 3 -w json"),
        cmd("get \"\" --prefix -w json"),
        cmd("del \"\" --prefix").expect("3"),
        cmd("compact 13").expect("compacted revision 13"),
        restart_keel(),
        cmd("get \"\" --prefix -w json"),
        cmd("get \"\" --prefix --rev 13 -w json"),
        cmd("put a 5 -w json"),
        cmd("get a -w json").expect("\"version\":1"),
        cmd("compact 12").expect("compacted"),
        cmd("compact 14").expect("compacted revision 14"),
        restart_keel(),
        cmd("get a --rev 14 -w json"),
        cmd("put a 6 -w json"),
        cmd("get a -w json").expect("\"version\":2"),
    ]);
    check(&[], &steps);
}

/// 1.6 MiB: over etcd's default 1.5 MiB `--max-request-bytes`, under gRPC's receive limit.
const TOO_LARGE_BYTES: usize = 1_677_722;

#[test]
fn request_size_limit_matches_etcd() {
    let value_of = |size: usize| "v".repeat(size).into_bytes();
    // A value too large for one argument goes through stdin (`put KEY` reads it there).
    let mut too_large = cmd("put big");
    too_large.stdin = value_of(TOO_LARGE_BYTES);
    let mut fits = cmd("put big");
    fits.stdin = value_of(1_500_000);
    let mut too_large_json = cmd("put big -w json");
    too_large_json.stdin = value_of(TOO_LARGE_BYTES);
    check(
        &[],
        &[
            too_large.expect("request is too large"),
            too_large_json,
            fits.expect("OK"),
            cmd("get big --keys-only -w json"),
            cmd("get big -w json"),
        ],
    );
}

#[test]
fn a_small_max_request_bytes_is_enforced_like_etcd() {
    let big = "x".repeat(5_000);
    let mut steps = vec![
        Step {
            args: vec!["put".into(), "big".into(), big.clone()],
            stdin: Vec::new(),
            expect: Some("request is too large".into()),
        },
        Step {
            args: vec!["put".into(), "small".into(), "x".repeat(900)],
            stdin: Vec::new(),
            expect: Some("OK".into()),
        },
    ];
    steps.push(txn("", &format!("\nput big {big}\n\n\n")).expect("request is too large"));
    steps.push(cmd("get \"\" --prefix --keys-only -w json"));
    check(&["--max-request-bytes", "4096"], &steps);
}

/// The JSON field paths of `value` (object keys, arrays collapsed), to compare shapes.
fn shape(value: &Value, path: &str, paths: &mut std::collections::BTreeSet<String>) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                let path = format!("{path}.{name}");
                paths.insert(path.clone());
                shape(field, &path, paths);
            }
        }
        Value::Array(items) => {
            for item in items {
                shape(item, &format!("{path}[]"), paths);
            }
        }
        _ => {}
    }
}

#[test]
fn endpoint_status_and_member_list_have_etcds_shape() {
    let etcd = Etcd::start();
    let keel = Keel::start();
    // A fresh etcd has applied a few entries of its own (member, cluster version), and zero
    // fields are left out of the JSON; one write makes every index non-zero on both.
    for endpoint in [etcd.endpoint(), keel.endpoint()] {
        let output = etcdctl_with_stdin(&endpoint, &["put", "k", "v"], b"");
        assert_eq!(output.status, Some(0), "put on {endpoint}: {output:?}");
    }
    for args in [
        ["endpoint", "status", "-w", "json"],
        ["member", "list", "-w", "json"],
    ] {
        let mut shapes = Vec::new();
        for endpoint in [etcd.endpoint(), keel.endpoint()] {
            let output = etcdctl_with_stdin(&endpoint, &args, b"");
            assert_eq!(output.status, Some(0), "{args:?} on {endpoint}: {output:?}");
            let value: Value = serde_json::from_str(output.stdout.trim())
                .unwrap_or_else(|error| panic!("{args:?}: not JSON ({error}): {output:?}"));
            let mut paths = std::collections::BTreeSet::new();
            shape(&value, "", &mut paths);
            shapes.push(paths);
        }
        assert_eq!(shapes[0], shapes[1], "{args:?}: etcd's shape, then Keel's");
    }
    // The simple formats print one line per member/endpoint.
    for args in [["endpoint", "status"], ["member", "list"]] {
        let lines: Vec<usize> = [etcd.endpoint(), keel.endpoint()]
            .iter()
            .map(|endpoint| {
                let output = etcdctl_with_stdin(endpoint, &args, b"");
                assert_eq!(output.status, Some(0), "{args:?}: {output:?}");
                output.stdout.lines().count()
            })
            .collect();
        assert_eq!(
            lines[0], lines[1],
            "{args:?}: lines printed by etcd, then Keel"
        );
    }
}
