//! Bookkeeping of the KV cache's cells: which sequence and position each cell
//! holds. The cache itself (K and V tensors per layer) lives on the server that
//! owns the layer; every stage uses the same cell indices, so one table serves
//! all of them.

use half::f16;

/// A sequence id.
pub type SeqId = u32;

/// What one cell of the cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// The sequence the cell belongs to.
    pub seq: SeqId,
    /// The token position it holds.
    pub pos: u32,
}

/// The cell table of a unified KV cache shared by all sequences.
#[derive(Debug, Clone)]
pub struct KvCells {
    cells: Vec<Option<Cell>>,
    /// Where the next search for free cells starts (cells fill in order).
    head: usize,
}

/// The cache has no room for a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("KV cache full: {needed} cells needed, {free} free of {size} (raise --ctx)")]
pub struct CacheFull {
    /// Cells the batch needs.
    pub needed: usize,
    /// Cells free.
    pub free: usize,
    /// Cells in all.
    pub size: usize,
}

impl KvCells {
    /// A table of `size` empty cells.
    pub fn new(size: usize) -> Self {
        KvCells {
            cells: vec![None; size],
            head: 0,
        }
    }

    /// Number of cells.
    pub fn size(&self) -> usize {
        self.cells.len()
    }

    /// Cells in use.
    pub fn used(&self) -> usize {
        self.cells.iter().filter(|c| c.is_some()).count()
    }

    /// The cell at `i`.
    pub fn get(&self, i: usize) -> Option<Cell> {
        self.cells.get(i).copied().flatten()
    }

    /// Claims one free cell for each of `tokens` (sequence, position) and
    /// returns their indices, in order. Nothing changes when they do not fit.
    pub fn claim(&mut self, tokens: &[Cell]) -> Result<Vec<usize>, CacheFull> {
        let n = self.cells.len();
        let free = n - self.used();
        if tokens.len() > free {
            return Err(CacheFull {
                needed: tokens.len(),
                free,
                size: n,
            });
        }
        let mut out = Vec::with_capacity(tokens.len());
        let mut i = self.head;
        for &t in tokens {
            while self.cells[i % n].is_some() {
                i += 1;
            }
            self.cells[i % n] = Some(t);
            out.push(i % n);
            i += 1;
        }
        self.head = i % n.max(1);
        Ok(out)
    }

    /// Puts `tokens[i]` in cell `idx[i]`. Nothing changes when a cell is
    /// taken or out of range.
    pub fn place(&mut self, idx: &[usize], tokens: &[Cell]) -> Result<(), CacheFull> {
        let n = self.cells.len();
        let bad =
            idx.len() != tokens.len() || idx.iter().any(|&i| i >= n || self.cells[i].is_some());
        if bad {
            return Err(CacheFull {
                needed: tokens.len(),
                free: n - self.used(),
                size: n,
            });
        }
        for (&i, &t) in idx.iter().zip(tokens) {
            self.cells[i] = Some(t);
        }
        Ok(())
    }

    /// Frees one cell.
    pub fn release(&mut self, i: usize) {
        if let Some(c) = self.cells.get_mut(i) {
            *c = None;
        }
    }

    /// Frees every cell of `seq`.
    pub fn remove_seq(&mut self, seq: SeqId) {
        for c in &mut self.cells {
            if c.is_some_and(|c| c.seq == seq) {
                *c = None;
            }
        }
    }

    /// Frees every cell.
    pub fn clear(&mut self) {
        self.cells.iter_mut().for_each(|c| *c = None);
        self.head = 0;
    }

    /// How many leading cells attention must look at: past the last used
    /// cell, rounded up to 256 (at least 256, at most the cache), so the
    /// graph's shape changes rarely while short sequences do not pay for the
    /// whole cache. Attention skips masked cells, so the width never changes
    /// the result.
    pub fn attention_window(&self) -> usize {
        const PAD: usize = 256;
        let used_end = self
            .cells
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |i| i + 1);
        used_end
            .div_ceil(PAD)
            .max(1)
            .saturating_mul(PAD)
            .min(self.cells.len())
    }

    /// The attention mask for a batch of query tokens over the first `width`
    /// cells, in f16 (what ggml's flash attention takes), row-major
    /// `[rows][width]`: 0 where query `q` may see the cell (same sequence,
    /// not a later position), -inf elsewhere. Rows past `queries.len()`
    /// (padding) are all -inf.
    pub fn mask_f16(&self, queries: &[Cell], rows: usize, width: usize) -> Vec<f16> {
        const ZERO: f16 = f16::ZERO;
        const NEG_INF: f16 = f16::NEG_INFINITY;
        let n = width.min(self.cells.len()).max(1);
        let mut m = vec![NEG_INF; rows * n];
        for (q, row) in queries.iter().zip(m.chunks_exact_mut(n)) {
            for (c, v) in self.cells[..n].iter().zip(row.iter_mut()) {
                if let Some(c) = c {
                    if c.seq == q.seq && c.pos <= q.pos {
                        *v = ZERO;
                    }
                }
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(seq: SeqId, pos: u32) -> Cell {
        Cell { seq, pos }
    }

    #[test]
    fn claims_in_order_and_frees_by_sequence() {
        let mut kv = KvCells::new(6);
        assert_eq!(
            kv.claim(&[cell(0, 0), cell(0, 1), cell(0, 2)]).unwrap(),
            [0, 1, 2]
        );
        assert_eq!(kv.claim(&[cell(1, 0), cell(1, 1)]).unwrap(), [3, 4]);
        kv.remove_seq(0);
        assert_eq!(kv.used(), 2);
        // Wraps around to the freed cells.
        assert_eq!(kv.claim(&[cell(2, 0), cell(2, 1)]).unwrap(), [5, 0]);
        let err = kv.claim(&[cell(3, 0); 3]).unwrap_err();
        assert_eq!(
            err,
            CacheFull {
                needed: 3,
                free: 2,
                size: 6
            }
        );
        assert_eq!(kv.used(), 4, "a failed claim changes nothing");
    }

    #[test]
    fn attention_window_covers_the_last_used_cell_in_steps_of_256() {
        let mut kv = KvCells::new(1000);
        assert_eq!(kv.attention_window(), 256);
        kv.place(&[300], &[cell(0, 0)]).unwrap();
        assert_eq!(kv.attention_window(), 512);
        kv.place(&[999], &[cell(1, 0)]).unwrap();
        assert_eq!(kv.attention_window(), 1000, "never past the cache");
        assert_eq!(KvCells::new(100).attention_window(), 100);
        let m = kv.mask_f16(&[cell(0, 5)], 1, 512);
        assert_eq!(m.len(), 512);
        assert_eq!(m[300], f16::ZERO);
    }

    #[test]
    fn mask_is_causal_per_sequence_with_padding_rows() {
        let mut kv = KvCells::new(4);
        kv.claim(&[cell(0, 0), cell(1, 0), cell(0, 1)]).unwrap();
        let m = kv.mask_f16(&[cell(0, 1), cell(1, 0)], 3, 4);
        let z = f16::ZERO;
        let x = f16::NEG_INFINITY;
        assert_eq!(x.to_bits(), 0xfc00, "ggml's f16 -inf");
        assert_eq!(
            &m[0..4],
            &[z, x, z, x],
            "seq 0 pos 1 sees its cells 0 and 2"
        );
        assert_eq!(&m[4..8], &[x, z, x, x], "seq 1 sees only its own cell");
        assert_eq!(&m[8..12], &[x, x, x, x], "padding row");
    }
}
