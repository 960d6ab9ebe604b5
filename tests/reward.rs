//! Reward modeling: the head reads the last real token under both paddings, and a tiny reward
//! model learns a planted rule ("the response containing `excellent` wins") to ≥ 95 % held-out
//! accuracy with a fixed seed.

mod common;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlhf_lab::model::generate::left_pad;
use rlhf_lab::model::reward::RewardModel;
use rlhf_lab::model::{Gpt2Config, LanguageModel, Precision};
use rlhf_lab::stages::reward::bradley_terry_loss;
use rlhf_lab::train::optimizer::{AdamW, AdamWConfig};
use tch::{Device, Kind, Tensor};

fn fresh_reward_model(dir: &std::path::Path) -> RewardModel {
    let config = Gpt2Config {
        vocab_size: 300,
        n_positions: 48,
        n_embd: 32,
        n_layer: 2,
        n_head: 2,
        n_inner: None,
        layer_norm_epsilon: 1e-5,
        embd_pdrop: 0.0,
        attn_pdrop: 0.0,
        resid_pdrop: 0.0,
        initializer_range: 0.02,
        bos_token_id: 0,
        eos_token_id: 0,
    };
    tch::manual_seed(7);
    LanguageModel::fresh(&config, common::tiny_tokenizer(300), Device::Cpu, Precision::Fp32).save(dir).unwrap();
    RewardModel::load(dir, Device::Cpu, Precision::Fp32, true).unwrap()
}

#[test]
fn scores_are_read_at_the_last_real_token_under_left_and_right_padding() {
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_reward_model(dir.path());
    let rows = vec![vec![5i64, 6, 7, 8, 9], vec![11, 12]];
    let (left_ids, left_mask) = left_pad(&rows, 0, Device::Cpu);
    let right_ids = Tensor::from_slice2(&[[5i64, 6, 7, 8, 9], [11, 12, 0, 0, 0]]);
    let right_mask = Tensor::from_slice2(&[[1i64, 1, 1, 1, 1], [1, 1, 0, 0, 0]]);
    let _no_grad = tch::no_grad_guard();
    let left = model.scores(&left_ids, &left_mask, false);
    let right = model.scores(&right_ids, &right_mask, false);
    let alone = model.scores(&Tensor::from_slice2(&[[11i64, 12]]), &Tensor::from_slice2(&[[1i64, 1]]), false);
    assert!((&left - &right).abs().max().double_value(&[]) < 1e-5, "{left} vs {right}");
    assert!((left.double_value(&[1]) - alone.double_value(&[0])).abs() < 1e-5);
    // and not at a padding position: the padded row's score differs from its padding's output
    assert!(left.double_value(&[0]) != left.double_value(&[1]));
}

/// A short "review" of random filler words; `with_rule` adds the winning word somewhere.
fn response(rng: &mut ChaCha8Rng, with_rule: bool) -> String {
    const FILLER: &[&str] = &["battery", "screen", "price", "the", "is", "fair", "dull", "and", "review"];
    let mut words: Vec<&str> = (0..rng.random_range(4..9)).map(|_| *FILLER.choose(rng).unwrap()).collect();
    if with_rule {
        let at = rng.random_range(0..=words.len());
        words.insert(at, "excellent");
    }
    format!(" {}", words.join(" "))
}

#[test]
fn a_tiny_reward_model_learns_a_planted_rule() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = fresh_reward_model(dir.path());
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut pairs = |n: usize| -> Vec<(String, String)> { (0..n).map(|_| (response(&mut rng, true), response(&mut rng, false))).collect() };
    let (train, held_out) = (pairs(512), pairs(200));

    let mut optimizer = AdamW::new(&model.vs, AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 });
    let score = |model: &RewardModel, batch: &[(String, String)], train: bool| {
        let rows: Vec<Vec<i64>> = batch
            .iter()
            .map(|(chosen, _)| model.encode("review:", chosen).unwrap())
            .chain(batch.iter().map(|(_, rejected)| model.encode("review:", rejected).unwrap()))
            .collect();
        let (ids, mask) = left_pad(&rows, 0, Device::Cpu);
        let scores = model.scores(&ids, &mask, train);
        let n = batch.len() as i64;
        (scores.narrow(0, 0, n), scores.narrow(0, n, n))
    };
    let zeros = Tensor::zeros([32], (Kind::Float, Device::Cpu));
    let no_ties = Tensor::zeros([32], (Kind::Bool, Device::Cpu));
    for epoch in 0..3 {
        for batch in train.chunks(32) {
            let (chosen, rejected) = score(&model, batch, true);
            bradley_terry_loss(&chosen, &rejected, &zeros, &no_ties, 0.0).backward();
            optimizer.step(if epoch == 0 { 1e-3 } else { 5e-4 });
            optimizer.zero_grad();
        }
    }
    model.vs.freeze();
    let _no_grad = tch::no_grad_guard();
    let (chosen, rejected) = score(&model, &held_out, false);
    let accuracy = chosen.gt_tensor(&rejected).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    assert!(accuracy >= 0.95, "held-out accuracy {accuracy}");
}
