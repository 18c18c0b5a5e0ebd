//! A set of interrupt vectors, one bit each.

/// A set of interrupt vectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VectorSet([u64; 4]);

impl VectorSet {
    pub const fn new() -> Self {
        VectorSet([0; 4])
    }
    /// A LAPIC vector register (ISR, TMR, IRR) from its eight 32-bit words, vectors 32*i..32*i+31 in
    /// word i (SDM Vol. 3A 11.8.4, Table 11-6).
    pub fn from_lapic_words(words: [u32; 8]) -> Self {
        VectorSet(core::array::from_fn(|i| {
            u64::from(words[2 * i]) | u64::from(words[2 * i + 1]) << 32
        }))
    }
    /// Vectors 64*i..64*i+63 in word i: the layout of the VMCS's four EOI-exit bitmaps (SDM Vol.
    /// 3C 25.6.8).
    pub const fn words(&self) -> [u64; 4] {
        self.0
    }
    pub fn insert(&mut self, v: u8) {
        self.0[usize::from(v / 64)] |= 1 << (v % 64);
    }
    pub fn remove(&mut self, v: u8) {
        self.0[usize::from(v / 64)] &= !(1 << (v % 64));
    }
    pub const fn contains(&self, v: u8) -> bool {
        self.0[(v / 64) as usize] & (1 << (v % 64)) != 0
    }
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=255u8).filter(|&v| self.contains(v))
    }
    pub fn union(&self, other: &Self) -> Self {
        let mut out = *self;
        for (o, x) in out.0.iter_mut().zip(other.0) {
            *o |= x;
        }
        out
    }
}

impl FromIterator<u8> for VectorSet {
    fn from_iter<I: IntoIterator<Item = u8>>(iter: I) -> Self {
        let mut s = VectorSet::new();
        for v in iter {
            s.insert(v);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapic_words_map_to_their_vectors() {
        let mut words = [0u32; 8];
        words[1] = 1 << 2; // vector 34
        words[7] = 1 << 31; // vector 255
        let set = VectorSet::from_lapic_words(words);
        assert_eq!(set.iter().collect::<alloc::vec::Vec<_>>(), [34, 255]);
        assert_eq!(VectorSet::from_lapic_words([0; 8]), VectorSet::new());
    }
}
