"""Every reproduce.py row that smooths (LDS or FDS) states its kernel window, so no row silently falls back to
train.py's dataset-dependent defaults (AgeDB: ks 9, sigma 1). ConR's source gives no window for its FDS rows;
they carry the published window of every other row (gaussian, ks 5, sigma 2)."""
from ranksim.harness.paper import TABLE_ROWS


def flag_values(flags):
    """{name: value or True} of a flag list, written here independently of ranksim.harness.paper."""
    out, i = {}, 0
    while i < len(flags):
        name = flags[i][2:]
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            out[name], i = flags[i + 1], i + 2
        else:
            out[name], i = True, i + 1
    return out


def all_rows():
    return [(dataset, row) for dataset, rows in TABLE_ROWS.items() for row in rows]


def test_every_fds_and_lds_row_states_its_window():
    checked = 0
    for dataset, row in all_rows():
        flags = flag_values(row.flags)
        for method in ("fds", "lds"):
            if flags.get(method):
                window = (flags.get(f"{method}_kernel"), flags.get(f"{method}_ks"), flags.get(f"{method}_sigma"))
                assert window == ("gaussian", "5", "2"), f"{dataset} {row.key}: --{method} window {window}"
                checked += 1
    assert checked > 20  # the FDS/LDS rows of every table, comparators and AgeDB protocols included


def test_conr_fds_rows_carry_the_published_window():
    rows = {row.key: row for row in TABLE_ROWS["agedb"]}
    for key in ("sqinv-fds-ranksim-conr", "sqinv-lds-fds-ranksim-conr"):
        flags = flag_values(rows[key].flags)
        assert (flags["fds_ks"], flags["fds_sigma"]) == ("5", "2"), key
        assert flags["conr"] is True and flags["regularization_weight"] == "100"
