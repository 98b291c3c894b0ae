//! Side-by-side runs: the same etcdctl steps on a fresh etcd and a fresh Keel, compared after a
//! test-specific normalisation.

use std::fmt::Debug;

use super::{etcdctl_with_stdin, Etcd, Keel, Output};

/// Marks where Keel is killed with SIGKILL and started again on its data; etcd is left running.
pub const RESTART: &str = "<kill -9 and restart keel>";

/// One etcdctl invocation.
pub struct Step {
    pub args: Vec<String>,
    pub stdin: Vec<u8>,
    /// Text etcd's answer must contain: proves the step tests what it means to.
    pub expect: Option<String>,
}

impl Step {
    pub fn new(args: Vec<String>) -> Step {
        Step {
            args,
            stdin: Vec::new(),
            expect: None,
        }
    }

    pub fn restart_keel() -> Step {
        Step::new(vec![RESTART.to_owned()])
    }

    pub fn expect(mut self, text: &str) -> Step {
        self.expect = Some(text.to_owned());
        self
    }

    pub fn stdin(mut self, input: &str) -> Step {
        self.stdin = input.as_bytes().to_vec();
        self
    }

    pub fn describe(&self) -> String {
        let mut args: Vec<String> = self
            .args
            .iter()
            .map(|arg| {
                if arg.len() > 40 {
                    format!("<{} bytes>", arg.len())
                } else {
                    format!("{arg:?}")
                }
            })
            .collect();
        if !self.stdin.is_empty() {
            if self.stdin.len() > 200 {
                args.push(format!("<stdin {} bytes>", self.stdin.len()));
            } else {
                args.push(format!(
                    "<stdin {:?}>",
                    String::from_utf8_lossy(&self.stdin)
                ));
            }
        }
        format!("etcdctl {}", args.join(" "))
    }
}

fn run_all<S>(
    endpoint: &str,
    steps: &[Step],
    normalize: fn(&Output) -> S,
    mut restart: impl FnMut(),
) -> Vec<S> {
    steps
        .iter()
        .map(|step| {
            if step.args == [RESTART] {
                restart();
                return normalize(&Output {
                    status: Some(0),
                    stdout: String::new(),
                    stderr: String::new(),
                });
            }
            let args: Vec<&str> = step.args.iter().map(String::as_str).collect();
            normalize(&etcdctl_with_stdin(endpoint, &args, &step.stdin))
        })
        .collect()
}

/// Runs `steps` on a fresh etcd and a fresh Keel, both started with `flags`, then hands the
/// Keel member to `inspect_keel`; fails listing every step whose normalised answers differ.
/// `raw` gives the text of a normalised answer, for the `expect` check and for spotting
/// etcdctl refusing a command itself.
pub fn check_against_etcd<S: PartialEq + Debug + Send>(
    flags: &[&str],
    steps: &[Step],
    normalize: fn(&Output) -> S,
    raw: fn(&S) -> String,
    inspect_keel: impl FnOnce(&Keel) + Send,
) {
    let (etcd_seen, keel_seen) = std::thread::scope(|scope| {
        let etcd = scope.spawn(|| {
            let etcd = Etcd::start_with(flags);
            run_all(&etcd.endpoint(), steps, normalize, || {})
        });
        let keel = scope.spawn(|| {
            let mut keel = Keel::start_with(flags);
            let endpoint = keel.endpoint();
            let seen = run_all(&endpoint, steps, normalize, || {
                keel.kill_9();
                keel.restart();
            });
            inspect_keel(&keel);
            seen
        });
        (
            etcd.join().expect("etcd side"),
            keel.join().expect("keel side"),
        )
    });
    let mut report = String::new();
    for ((step, etcd), keel) in steps.iter().zip(&etcd_seen).zip(&keel_seen) {
        let all = raw(etcd);
        // A scenario that only exercises etcdctl's own argument parsing proves nothing.
        assert!(
            !all.contains("unknown flag") && !all.contains("NAME:"),
            "{}: etcdctl refused the command itself:\n{all}",
            step.describe()
        );
        if let Some(expected) = &step.expect {
            assert!(
                all.contains(expected.as_str()),
                "{}: etcd's answer does not contain {expected:?}:\n{all}",
                step.describe()
            );
        }
        if etcd != keel {
            report.push_str(&format!(
                "\n{}\n  etcd: {etcd:?}\n  keel: {keel:?}\n",
                step.describe()
            ));
        }
    }
    assert!(report.is_empty(), "Keel differs from etcd:{report}");
}
