fn main() {
    print!("{}", dualwrite::api::crd_yaml());
}
