// Migrations are embedded at compile time (refinery's embed_migrations!):
// rebuild when one is added or edited, or tests would run an old schema.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
