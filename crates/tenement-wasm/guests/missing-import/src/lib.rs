//! A component that imports an interface tenement does not provide (`tenement:test/vault`):
//! tenement must refuse it, naming the import.

wit_bindgen::generate!({
    inline: r#"
        package tenement:test;
        interface vault { get: func(key: string) -> string; }
        world missing { import vault; export run: func() -> string; }
    "#,
});

struct Component;

impl Guest for Component {
    fn run() -> String {
        tenement::test::vault::get("secret")
    }
}

export!(Component);
