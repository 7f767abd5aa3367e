//! Print what the engine finds for a device: `cargo run --example probe -- PATH`.
use ringmirror_engine::{BlockDevice, Engine, EngineConfig, OpenOptions};

fn main() {
    let path = std::env::args().nth(1).expect("usage: probe PATH");
    let engine = Engine::new(EngineConfig::default()).expect("engine");
    println!("engine: {:?}", engine.status());
    let dev = engine.open(&path, &OpenOptions::read_only()).expect("open");
    println!("{:?} size {}", dev.info(), dev.size());
    let b = dev.alloc_buf(4096);
    println!("buf registered: {} align {}", b.is_registered(), b.align());
}
