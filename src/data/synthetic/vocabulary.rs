//! The words the synthetic reviews are made of.

pub struct Product {
    pub name: &'static str,
    pub aspects: &'static [&'static str],
}

pub const PRODUCTS: &[Product] = &[
    Product { name: "phone", aspects: &["battery", "screen", "camera", "price"] },
    Product { name: "laptop", aspects: &["keyboard", "screen", "battery", "speed"] },
    Product { name: "headphones", aspects: &["sound", "comfort", "battery", "price"] },
    Product { name: "hotel", aspects: &["room", "staff", "breakfast", "location"] },
    Product { name: "restaurant", aspects: &["food", "service", "price", "music"] },
    Product { name: "blender", aspects: &["motor", "noise", "price", "design"] },
];

pub const POSITIVE: &[&str] =
    &["great", "excellent", "reliable", "superb", "pleasant", "fantastic", "solid", "wonderful", "impressive", "lovely"];

pub const NEGATIVE: &[&str] =
    &["poor", "terrible", "awful", "disappointing", "weak", "annoying", "broken", "cheap", "horrible", "mediocre"];

pub const CONNECTORS: &[&str] = &["Overall", "Honestly", "In daily use", "After a week"];

pub const NEUTRAL_OPENERS: &[&str] = &["I bought the", "We tried the", "Here is my review of the", "Last month I used the"];
