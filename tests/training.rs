//! Training mechanics: response-only loss, gradient accumulation, a tiny model that learns a
//! pattern and then generates it, stopping each row at its own end-of-text.

mod common;

use rlhf_lab::model::generate::{generate, generate_rows, GenerateOptions, Sampling};
use rlhf_lab::model::{LanguageModel, Precision};
use rlhf_lab::stages::lm::{accumulate_gradients, masked_batch, Batch, Example, IGNORE};
use rlhf_lab::train::optimizer::{AdamW, AdamWConfig};
use tch::{Device, Kind, Tensor};

/// `ids` whose tokens from `prompt_len` on are targets (a demonstration's response).
fn example(ids: &[i64], prompt_len: usize) -> Example {
    Example { ids: ids.to_vec(), is_target: (0..ids.len()).map(|i| i >= prompt_len).collect() }
}

/// A batch of (ids, prompt_len) rows.
fn response_only_batch(rows: &[(&[i64], usize)]) -> Batch {
    let examples: Vec<Example> = rows.iter().map(|&(ids, prompt_len)| example(ids, prompt_len)).collect();
    masked_batch(&examples.iter().collect::<Vec<_>>(), 0, Device::Cpu)
}

fn tiny_model(seed: i64) -> LanguageModel {
    tch::manual_seed(seed);
    LanguageModel::fresh(common::tiny_config(300, 32, 32, 2, 2), common::tiny_tokenizer(300), Device::Cpu, Precision::Fp32)
}

#[test]
fn only_response_tokens_are_targets() {
    // prompt [5, 6, 7], response [8, 9], end-of-text 0; a second, shorter row is padded.
    let rows: Vec<(&[i64], usize)> = vec![(&[5, 6, 7, 8, 9, 0], 3), (&[5, 8, 0], 1)];
    let batch = response_only_batch(&rows);
    let inputs = Vec::<Vec<i64>>::try_from(&batch.inputs).unwrap();
    let targets = Vec::<Vec<i64>>::try_from(&batch.targets).unwrap();
    assert_eq!(inputs, vec![vec![5, 6, 7, 8, 9], vec![5, 8, 0, 0, 0]]);
    // position t predicts token t+1; prompt tokens (6, 7) and padding carry no loss
    assert_eq!(targets, vec![vec![IGNORE, IGNORE, 8, 9, 0], vec![8, 0, IGNORE, IGNORE, IGNORE]]);
    assert_eq!(batch.target_tokens, 5);
}

fn gradients(model: &LanguageModel) -> Vec<Tensor> {
    let mut variables: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    variables.into_iter().map(|(_, t)| t.grad().copy()).collect()
}

#[test]
fn four_micro_batches_of_eight_equal_one_batch_of_thirty_two() {
    // 32 examples of different prompt and response lengths, so micro-batches hold different
    // numbers of target tokens.
    tch::manual_seed(11);
    let examples: Vec<(Vec<i64>, usize)> = (0..32)
        .map(|i| {
            let len = 6 + (i % 7) as i64;
            let ids = Vec::<i64>::try_from(Tensor::randint_low(1, 300, [len], (Kind::Int64, Device::Cpu))).unwrap();
            (ids, 2 + (i % 3))
        })
        .collect();
    let rows: Vec<(&[i64], usize)> = examples.iter().map(|(ids, p)| (ids.as_slice(), *p)).collect();

    let model = tiny_model(1);
    let whole = [response_only_batch(&rows)];
    let loss_whole = accumulate_gradients(model.transformer.as_ref(), &whole, 1.0).unwrap();
    let grads_whole = gradients(&model);

    let model = tiny_model(1);
    let micro: Vec<Batch> = rows.chunks(8).map(response_only_batch).collect();
    let loss_micro = accumulate_gradients(model.transformer.as_ref(), &micro, 1.0).unwrap();
    let grads_micro = gradients(&model);

    assert!((loss_whole - loss_micro).abs() < 1e-5, "{loss_whole} vs {loss_micro}");
    for (a, b) in grads_whole.iter().zip(&grads_micro) {
        let diff = (a - b).abs().max().double_value(&[]);
        let scale = a.abs().max().double_value(&[]).max(1e-8);
        assert!(diff / scale < 1e-4, "gradients differ by {diff} (scale {scale})");
    }
}

#[test]
fn a_tiny_model_learns_a_pattern_and_each_row_stops_at_its_end_of_text() {
    // The pattern 7 8 9 10 end-of-text, repeated; after training, greedy generation continues
    // any prefix of it and stops at end-of-text.
    let mut model = tiny_model(3);
    let sequence: Vec<i64> = [7, 8, 9, 10, 0].repeat(6);
    let rows: Vec<(&[i64], usize)> = (0..8).map(|_| (sequence.as_slice(), 0)).collect();
    let batch = [response_only_batch(&rows)];
    let mut optimizer = AdamW::new(&model.vs, AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.0 });
    let mut loss = f64::INFINITY;
    for _ in 0..150 {
        loss = accumulate_gradients(model.transformer.as_ref(), &batch, 1.0).unwrap();
        optimizer.step(3e-3).unwrap();
        optimizer.zero_grad().unwrap();
    }
    assert!(loss < 0.05, "the pattern was not learned: loss {loss}");
    model.vs.freeze();

    // Prompts keep the training alignment (learned positions): 7 at positions 0, 5, 10, …
    let prompts = vec![vec![7], vec![7, 8, 9], vec![7, 8, 9, 10, 0, 7, 8]];
    let options = GenerateOptions { max_new_tokens: 8, sampling: Sampling::Greedy, seed: None, use_kv_cache: true };
    let generation = generate(model.transformer.as_ref(), &prompts, &[0], &options).unwrap();
    assert_eq!(generation.completions(), vec![vec![8, 9, 10], vec![10], vec![9, 10]]);
    assert_eq!(generation.stopped(), vec![true, true, true]);
    // each row stops at its own end-of-text: mask covers the tokens up to and including it
    let mask = Vec::<Vec<i64>>::try_from(&generation.completion_mask).unwrap();
    assert_eq!(mask, vec![vec![1, 1, 1, 1], vec![1, 1, 0, 0], vec![1, 1, 1, 0]]);
    let logprobs = Vec::<Vec<f32>>::try_from(&generation.logprobs).unwrap();
    assert_eq!(logprobs[1][2..], [0.0, 0.0], "log-probs after a row stopped must be 0");
    assert!(logprobs[0].iter().all(|&lp| lp <= 0.0 && lp > -0.5), "confident tokens: {logprobs:?}");
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let model = tiny_model(4);
    let prompts = vec![vec![5, 6], vec![9]];
    let sample = |seed| {
        let options = GenerateOptions {
            max_new_tokens: 12,
            sampling: Sampling::Sample { temperature: 1.0, top_k: Some(50), top_p: Some(0.95) },
            seed: Some(seed),
            use_kv_cache: true,
        };
        generate(model.transformer.as_ref(), &prompts, &[0], &options).unwrap().completions()
    };
    assert_eq!(sample(1), sample(1));
    assert_ne!(sample(1), sample(2));
}

/// A data-parallel rank generates only its rows of a batch: each row must be what the whole
/// batch's generation samples for it (same padding, same random numbers), and its stopping must
/// not wait for rows it does not compute.
#[test]
fn generating_some_rows_samples_them_as_the_whole_batch_does() {
    let model = tiny_model(4);
    let prompts = vec![vec![5, 6], vec![9], vec![3, 4, 5, 6], vec![7], vec![8, 8]];
    let options = GenerateOptions {
        max_new_tokens: 10,
        sampling: Sampling::Sample { temperature: 1.0, top_k: Some(50), top_p: Some(0.95) },
        seed: Some(3),
        use_kv_cache: true,
    };
    let whole = generate(model.transformer.as_ref(), &prompts, &[0], &options).unwrap();
    let whole_ids = Vec::<Vec<i64>>::try_from(&whole.completion_ids).unwrap();
    let whole_logprobs = Vec::<Vec<f32>>::try_from(&whole.logprobs).unwrap();
    for rows in [0..2, 2..5, 4..5] {
        let part = generate_rows(model.transformer.as_ref(), &prompts, &[0], &options, rows.clone()).unwrap();
        assert_eq!(part.completions(), whole.completions()[rows.clone()], "rows {rows:?}");
        assert_eq!(part.prompt_ids.size()[1], whole.prompt_ids.size()[1], "padded to the whole batch's width");
        let ids = Vec::<Vec<i64>>::try_from(&part.completion_ids).unwrap();
        let logprobs = Vec::<Vec<f32>>::try_from(&part.logprobs).unwrap();
        for (row, (ids, logprobs)) in rows.clone().zip(ids.iter().zip(&logprobs)) {
            assert_eq!(ids[..], whole_ids[row][..ids.len()], "row {row}");
            for (a, b) in logprobs.iter().zip(&whole_logprobs[row]) {
                assert!((a - b).abs() < 1e-5, "row {row}: {a} vs {b}");
            }
            // Tokens the part did not generate come after every one of its rows stopped.
            assert!(whole_ids[row][ids.len()..].iter().all(|&id| id == 0), "row {row} stopped within the part");
        }
    }
}
