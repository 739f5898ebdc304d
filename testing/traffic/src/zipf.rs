//! Zipf popularity.

use rand::Rng;

/// Samples ranks 0..n with probability proportional to 1 / (rank + 1)^s.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// A Zipf distribution over `n` items (at least one) with exponent `s`.
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut acc = 0.0;
        let cdf = (0..n.max(1))
            .map(|i| {
                acc += 1.0 / ((i + 1) as f64).powf(s);
                acc
            })
            .collect::<Vec<_>>();
        let total = acc;
        Zipf {
            cdf: cdf.into_iter().map(|c| c / total).collect(),
        }
    }

    /// Draws a rank.
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn rank_zero_is_the_most_popular() {
        let z = Zipf::new(100, 1.0);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let mut hits = [0u32; 100];
        for _ in 0..20_000 {
            hits[z.sample(&mut rng)] += 1;
        }
        // p(0) = 1/H(100) = 19.3%, p(1) = 9.6%
        assert!(hits[0] > 3_400 && hits[0] < 4_300, "rank 0 drew {}", hits[0]);
        assert!(hits[0] > hits[1] && hits[1] > hits[50]);
    }
}
