# What deploy/bench.sh, bench-ab.sh and bench-ir.sh share; sourced by them, not run.
# Education's person lookup by identity number, the load the README's figures use.
LOOKUP=(--provider public-security --type person.v1 --purpose school-enrolment --criterion /id_number=110105198405049582)

# bench_record FILE: customs' declaration that the publish runs send.
bench_record() {
  cat > "$1" <<'JSON'
{"declaration_id": "440663864056324842", "direction": "import", "declared_on": "2025-07-22", "trader_uscc": "91110105MAMLQQMQFA", "port_code": "6508", "transport": {"mode": "road", "vehicle_plate": "D96371", "driver_id_number": "110108198912063214"}, "goods": [{"line": 1, "hs_code": "6746284797", "description": "carpet", "quantity": 191, "unit": "kg", "value": {"amount": 16340.78, "currency": "CNY"}}, {"line": 2, "hs_code": "3307799606", "description": "yak wool", "quantity": 108, "unit": "item", "value": {"amount": 94870.91, "currency": "CNY"}}]}
JSON
}

# bench_folder PROJ DIR: DIR made ready for `crossgate up --config deploy/local` from it: a
# copy of PROJ's deploy/local with the rate limits lifted (the load is what is measured), and
# PROJ's schemas.
bench_folder() {
  mkdir -p "$2/deploy" && cp -r "$1/deploy/local" "$2/deploy/local" && ln -s "$1/schemas" "$2/schemas" &&
    printf 'timezone = "+08:00"\n[default]\nrate = "1000000/s"\nburst = 1000000\n' > "$2/deploy/local/limits.toml"
}
