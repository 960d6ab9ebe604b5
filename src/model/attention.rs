//! What every architecture's attention shares: the KV cache, the positions and masks of a forward
//! pass over left-padded rows (computed once, used by every layer), and the fused kernel call.

use tch::{Device, Kind, Tensor};

/// Keys and values of earlier positions, one buffer per layer, allocated once for the whole
/// generation (`[batch, kv_heads, capacity, head_dim]`) so that a decoding step copies only the
/// new position instead of concatenating the whole history.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: i64,
    capacity: i64,
}

/// Rows of a cache carried into a regrouped one ([`KvCache::regroup`]): `rows` (int64 indices),
/// from column `start` on (the columns before it are padding in every one of those rows).
pub struct CacheRows<'a> {
    pub cache: &'a KvCache,
    pub rows: &'a Tensor,
    pub start: i64,
}

/// The shape of a model's cache: layers, key-value heads and the width of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheShape {
    pub layers: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
}

impl KvCache {
    pub fn new(shape: CacheShape, batch: i64, capacity: i64, kind: Kind, device: Device) -> Self {
        let buffer_shape = [batch, shape.kv_heads, capacity, shape.head_dim];
        let buffers = || (0..shape.layers).map(|_| Tensor::zeros(buffer_shape, (kind, device))).collect();
        KvCache { keys: buffers(), values: buffers(), len: 0, capacity }
    }

    /// Number of positions already stored.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores layer `layer`'s keys and values `[batch, kv_heads, time, head_dim]` of the new
    /// positions after the `len` cached ones; returns all keys and values so far.
    pub(crate) fn extend(&mut self, layer: usize, keys: &Tensor, values: &Tensor) -> (Tensor, Tensor) {
        let time = keys.size()[2];
        assert!(self.len + time <= self.capacity, "KV cache capacity {} exceeded", self.capacity);
        self.keys[layer].narrow(2, self.len, time).copy_(keys);
        self.values[layer].narrow(2, self.len, time).copy_(values);
        (self.keys[layer].narrow(2, 0, self.len + time), self.values[layer].narrow(2, 0, self.len + time))
    }

    /// One cache holding rows of others, for a batch whose rows come and go (continuous
    /// batching): each part's columns from `start` on, right-aligned at the new length (the
    /// widest part's), with room for `room` more positions. Columns a row never had hold zeros;
    /// the batch's attention mask must hide them, as it hides left padding.
    pub fn regroup(parts: &[CacheRows], room: i64) -> KvCache {
        let first = parts.first().expect("rows to regroup").cache;
        let widths: Vec<i64> = parts.iter().map(|part| part.cache.len - part.start).collect();
        let len = widths.iter().copied().max().unwrap_or(0);
        let batch: i64 = parts.iter().map(|part| part.rows.size()[0]).sum();
        let layer = |buffers: &dyn Fn(&KvCache) -> &Vec<Tensor>, index: usize| {
            let template = &buffers(first)[index];
            let size = template.size();
            let out = Tensor::zeros([batch, size[1], len + room, size[3]], (template.kind(), template.device()));
            let mut row = 0;
            for (part, &width) in parts.iter().zip(&widths) {
                let count = part.rows.size()[0];
                let source = buffers(part.cache)[index].index_select(0, part.rows).narrow(2, part.start, width);
                out.narrow(0, row, count).narrow(2, len - width, width).copy_(&source);
                row += count;
            }
            out
        };
        let layers = first.keys.len();
        KvCache {
            keys: (0..layers).map(|index| layer(&|cache: &KvCache| &cache.keys, index)).collect(),
            values: (0..layers).map(|index| layer(&|cache: &KvCache| &cache.values, index)).collect(),
            len,
            capacity: len + room,
        }
    }

    /// Marks `time` new positions as stored, once every layer has extended.
    pub(crate) fn advance(&mut self, time: i64) {
        self.len += time;
    }
}

/// Which key positions each query may attend to, built once per forward pass and shared by all
/// layers.
pub(crate) enum AttentionMask {
    /// No padding and no cache: plain causal attention, left to the fused kernel.
    Causal,
    /// No padding, decoding one position against the cache: every cached key is visible.
    All,
    /// Boolean `[batch, 1, queries, keys]`, true where attention is allowed.
    Explicit(Tensor),
}

/// The positions `[batch, time]` and attention mask of a forward pass over `time` new tokens after
/// `past` cached ones. `attention_mask` (`[batch, past + time]`, 1 for real tokens, 0 for padding)
/// covers both. Positions are counted over real tokens only, so a left-padded row sees the same
/// positions (and so the same outputs) as the row unpadded.
pub(crate) fn positions_and_mask(
    attention_mask: Option<&Tensor>,
    batch: i64,
    past: i64,
    time: i64,
    device: Device,
) -> (Tensor, AttentionMask) {
    let padded = attention_mask.filter(|mask| mask.min().int64_value(&[]) == 0);
    let position_ids = match padded {
        Some(mask) => (mask.cumsum(1, Kind::Int64) - 1).clamp_min(0).narrow(1, past, time),
        None => Tensor::arange_start(past, past + time, (Kind::Int64, device)).unsqueeze(0).expand([batch, time], false),
    };
    let mask = match padded {
        Some(mask) => AttentionMask::Explicit(allowed_attention(mask, past, time)),
        None if past == 0 => AttentionMask::Causal,
        None if time == 1 => AttentionMask::All,
        None => {
            let all_real = Tensor::ones([batch, past + time], (Kind::Int64, device));
            AttentionMask::Explicit(allowed_attention(&all_real, past, time))
        }
    };
    (position_ids, mask)
}

/// Scaled dot-product attention of queries `[batch, heads, time, head_dim]` over keys and values
/// `[batch, kv_heads, keys, head_dim]`; with fewer key-value heads than query heads, each serves a
/// group of query heads (grouped-query attention, Ainslie et al. 2023).
pub(crate) fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttentionMask, dropout: f64) -> Tensor {
    let groups = q.size()[1] / k.size()[1];
    let (k, v) = if groups > 1 {
        (k.repeat_interleave_self_int(groups, Some(1), None), v.repeat_interleave_self_int(groups, Some(1), None))
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    match mask {
        AttentionMask::Causal => Tensor::scaled_dot_product_attention::<Tensor>(q, &k, &v, None, dropout, true, None, false),
        AttentionMask::All => Tensor::scaled_dot_product_attention::<Tensor>(q, &k, &v, None, dropout, false, None, false),
        AttentionMask::Explicit(allowed) => Tensor::scaled_dot_product_attention(q, &k, &v, Some(allowed), dropout, false, None, false),
    }
}

/// Boolean `[batch, 1, time, past + time]`: query `q` may see key `k` when `k ≤ q` (causal) and `k`
/// is a real token. A padding query may always see itself, so that no row is fully masked (which
/// would make the fused kernel return NaN); its output is never used.
fn allowed_attention(attention_mask: &Tensor, past: i64, time: i64) -> Tensor {
    let device = attention_mask.device();
    let keys = past + time;
    let query_positions = Tensor::arange_start(past, keys, (Kind::Int64, device)).unsqueeze(1);
    let key_positions = Tensor::arange(keys, (Kind::Int64, device)).unsqueeze(0);
    let causal = key_positions.le_tensor(&query_positions);
    let is_self = key_positions.eq_tensor(&query_positions);
    let real_keys = attention_mask.ne(0).unsqueeze(1);
    (causal.unsqueeze(0).logical_and(&real_keys)).logical_or(&is_self.unsqueeze(0)).unsqueeze(1)
}
