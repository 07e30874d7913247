"""One patient selection: ``fedrt train``, ``fedrt simulate`` (its virtual hospitals) and a hospital node given
the whole dataset see the same patients with the same ``data`` overrides, ``max_cases`` counting patient folders
(a flawed one among them is skipped, not replaced by the next).
"""

from __future__ import annotations

import yaml

from client.site import load_site
from configs.compose import compose
from models.centralized import load_data, task_from_config
from protocols.phantom import phantom_protocol, write_phantom_dataset
from protocols.protocol import load_protocol, protocol_to_dict
from server.federation import site_plan
from simulation.app import virtual_sites
from wire.plan import decode_plan
from wire.records import PLAN


def test_train_simulate_and_a_node_see_the_same_patients(tmp_path):
    small = phantom_protocol(load_protocol("hn-openkbp"), (48, 48, 48))
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(protocol_to_dict(small)))
    write_phantom_dataset(tmp_path / "data", small, 6, seed=0)
    (tmp_path / "data" / "pt_2" / "ct.csv").write_text(",data\n12,nan\n")  # a CT that cannot be read
    overrides = ["preset=smoke", f"protocol={tmp_path / 'small.yaml'}", f"data.root={tmp_path / 'data'}",
                 "data.max_cases=3", "data.max_val_cases=1", "num_sites=2", "policy=ignore"]
    config = compose(overrides)
    task = task_from_config(config)

    trained = [case.patient_id for case in load_data(config, task).train]
    assert trained == ["pt_1", "pt_3"]  # the first three folders, the broken pt_2 skipped, pt_4 not taken instead

    plan = decode_plan({PLAN: site_plan(config, task)})
    sites = virtual_sites(config, tmp_path / "sites")
    assert sorted(p.name for site in sites for p in site.train) == ["pt_1", "pt_2", "pt_3"]
    simulated = sorted(p.patient_id for site in sites for p in load_site(site.path, plan).train)
    node = [p.patient_id for p in load_site(tmp_path / "data", plan).train]
    assert simulated == node == trained
