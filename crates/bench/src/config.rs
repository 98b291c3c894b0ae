//! The knobs every workload shares, named after etcd's `benchmark` flags.

use std::time::Duration;

/// How a run is shaped: where it connects, how much concurrency, how big the keys and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `host:port` or `http://host:port`; connection `i` goes to `endpoints[i % len]`.
    pub endpoints: Vec<String>,
    /// gRPC connections (HTTP/2 channels) opened.
    pub conns: usize,
    /// Concurrent clients; client `i` uses connection `i % conns`.
    pub clients: usize,
    /// Requests to send in all; `None` with a `duration`: as many as fit.
    pub total: Option<u64>,
    /// Stop issuing requests after this long; `None` with a `total`: until that many.
    pub duration: Option<Duration>,
    pub key_size: usize,
    pub val_size: usize,
    /// Keys are drawn from `0..key_space_size`.
    pub key_space_size: u64,
    /// Keys in order (`request index % key_space_size`) instead of at random.
    pub sequential_keys: bool,
    /// A request that takes longer fails with "timeout".
    pub request_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            endpoints: vec!["127.0.0.1:2379".to_owned()],
            conns: 1,
            clients: 1,
            total: Some(10_000),
            duration: None,
            key_size: 8,
            val_size: 8,
            key_space_size: 1,
            sequential_keys: false,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Upper bound on a run without `--total`, so that no loop is unbounded even by mistake.
pub const TOTAL_MAX: u64 = 1 << 40;

impl Config {
    /// Checks the combination of flags; the error says which flag is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("--endpoints: at least one endpoint".into());
        }
        if self.conns == 0 || self.clients == 0 {
            return Err("--conns and --clients must be at least 1".into());
        }
        if self.total.is_none() && self.duration.is_none() {
            return Err("give --total or --duration (or both)".into());
        }
        if self.key_size == 0 {
            return Err("--key-size must be at least 1".into());
        }
        if self.key_space_size == 0 {
            return Err("--key-space-size must be at least 1".into());
        }
        Ok(())
    }

    /// The bound on requests issued.
    pub fn total_bound(&self) -> u64 {
        self.total.unwrap_or(TOTAL_MAX).min(TOTAL_MAX)
    }

    /// The key for index `index`: the decimal number, zero-padded to `key_size` bytes (longer
    /// when the number needs more digits), so keys are printable and sort by index.
    pub fn key(&self, index: u64) -> Vec<u8> {
        format!("{index:0width$}", width = self.key_size).into_bytes()
    }

    pub fn value(&self) -> Vec<u8> {
        vec![b'v'; self.val_size]
    }
}

/// Linearizable reads go through a ReadIndex (or quorum) round; serializable ones read the
/// member's local state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Linearizable,
    Serializable,
}

impl Consistency {
    pub fn parse(text: &str) -> Result<Consistency, String> {
        match text {
            "l" | "linearizable" => Ok(Consistency::Linearizable),
            "s" | "serializable" => Ok(Consistency::Serializable),
            other => Err(format!("--consistency: l or s, not {other:?}")),
        }
    }
}

/// A small, fast generator for key choice (xorshift64*); each client seeds its own.
#[derive(Debug, Clone)]
pub struct KeyChooser {
    state: u64,
}

impl KeyChooser {
    pub fn new(seed: u64) -> KeyChooser {
        // Never zero, and different clients well apart.
        KeyChooser {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform-enough number below `bound` (modulo bias is negligible for key choice).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// A number in `0.0..1.0`.
    pub fn fraction(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_padded_decimal() {
        let config = Config::default();
        assert_eq!(config.key(42), b"00000042");
        let short = Config {
            key_size: 2,
            ..Config::default()
        };
        assert_eq!(short.key(12_345), b"12345");
    }

    #[test]
    fn chooser_stays_in_bounds() {
        let mut chooser = KeyChooser::new(7);
        for _ in 0..10_000 {
            assert!(chooser.below(10) < 10);
            let fraction = chooser.fraction();
            assert!((0.0..1.0).contains(&fraction));
        }
    }

    #[test]
    fn validation_names_the_flag() {
        let config = Config {
            total: None,
            duration: None,
            ..Config::default()
        };
        assert!(config.validate().unwrap_err().contains("--total"));
        assert!(Config::default().validate().is_ok());
    }
}
