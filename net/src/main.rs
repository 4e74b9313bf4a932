fn main() {
    if let Err(e) = ringkv_net::run() {
        eprintln!("{e}");
        std::process::exit(1);
    }
}
