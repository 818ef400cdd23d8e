//! A deterministic local embedder for tests and demos.

use agentscale_core::{Embedder, Error, Result};
use async_trait::async_trait;

/// **For tests and demos only — not a semantic model.** Turns text into a
/// vector by feature hashing: the text is lower-cased and split into
/// alphanumeric words; each word (and each pair of neighbouring words) is
/// hashed (FNV-1a, stable across platforms and releases) to a dimension and a
/// sign; the vector is then L2-normalised.
///
/// Texts that share words get similar vectors, so nearest-neighbour search
/// behaves plausibly in examples, and the same text always gives the same
/// vector on every machine. It knows nothing about meaning: "car" and
/// "automobile" are unrelated to it. Use a real embedding model (for example
/// one served by Triton) in production.
///
/// An empty text (or one without alphanumeric characters) embeds to the zero
/// vector.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> agentscale_core::Result<()> {
/// use agentscale_core::Embedder;
/// use agentscale_state::local::HashEmbedder;
///
/// let e = HashEmbedder::new(64)?;
/// let v = e.embed(&["the cat sat".to_string(), "the cat sat".to_string()]).await?;
/// assert_eq!(v[0], v[1]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HashEmbedder {
    dimensions: usize,
}

impl HashEmbedder {
    /// An embedder producing `dimensions`-long vectors (zero is
    /// [`Error::InvalidConfig`]).
    pub fn new(dimensions: usize) -> Result<Self> {
        if dimensions == 0 {
            return Err(Error::InvalidConfig(
                "embedder dimensions must be greater than zero".into(),
            ));
        }
        Ok(HashEmbedder { dimensions })
    }

    /// Embeds one text synchronously.
    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; self.dimensions];
        let lower = text.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        for w in &words {
            self.add(&mut v, fnv1a(0xcbf2_9ce4_8422_2325, w.as_bytes()), 1.0);
        }
        for pair in words.windows(2) {
            let h = fnv1a(
                fnv1a(0x8422_2325_cbf2_9ce4, pair[0].as_bytes()),
                pair[1].as_bytes(),
            );
            self.add(&mut v, h, 0.5);
        }
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0.0 {
            v.iter_mut().for_each(|x| *x /= n);
        }
        v
    }

    fn add(&self, v: &mut [f32], h: u64, weight: f32) {
        let idx = (h % self.dimensions as u64) as usize;
        let sign = if (h >> 63) == 1 { -1.0 } else { 1.0 };
        v[idx] += sign * weight;
    }
}

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[async_trait]
impl Embedder for HashEmbedder {
    fn dimensions(&self) -> usize {
        self.dimensions
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|t| self.embed_one(t)).collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_normalised_and_similar_for_shared_words() {
        let e = HashEmbedder::new(256).unwrap();
        let a = e.embed_one("The quick brown fox");
        assert_eq!(a, e.embed_one("the QUICK brown fox!"));
        let n: f32 = a.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-5);
        let cos = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
        let near = e.embed_one("quick brown fox jumps");
        let far = e.embed_one("stock market report");
        assert!(cos(&a, &near) > cos(&a, &far));
        assert!(e.embed_one("  ").iter().all(|x| *x == 0.0));
        assert!(HashEmbedder::new(0).is_err());
    }
}
