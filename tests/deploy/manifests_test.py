#!/usr/bin/env python3
"""Checks every Kubernetes manifest under deploy/kubernetes for the invariants that
matter when steerd runs as N replicas on one PostgreSQL (and as the single-replica
SQLite overlay). It builds each kustomization itself (resources, strategic-merge patches
from files, `$patch: delete`, `images:`), because kustomize is not a build dependency,
then checks the result: gRPC probes on the gRPC port, Service target ports that exist in
the container, a PodDisruptionBudget and Services selecting exactly the pods, the
headless Service, no data volume in the replicated layouts, every Secret name and key a
pod reads present in the manifests, RollingUpdate with maxUnavailable 0 and several
replicas, the SQLite overlay's 1 replica + Recreate + PVC, ports and paths agreeing with
the Dockerfile's ENTRYPOINT, the optional HPA/ServiceMonitor/migration Job pointing at
real objects and real metric names (server/engine/metrics.cc). Where `kubectl` is on
PATH it also compares its own builds with `kubectl kustomize`. Needs Python 3 and PyYAML
(python3-yaml); run it directly or through ctest (deploy_manifests); exits non-zero on
any failure.
"""
import copy
import json
import re
import shutil
import subprocess
import sys
import unittest
import urllib.parse
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
METRICS_CC = ROOT / "server" / "engine" / "metrics.cc"

# The layouts deploy/README.md documents; the replicated ones run on PostgreSQL.
REPLICATED = ["base", "overlays/postgres-cnpg", "overlays/postgres-dev"]
SINGLE = "overlays/single-sqlite"
DEPLOYMENT = "steerd"
CONTAINER = "steerd"
HEADLESS = "steerd-headless"
STORE_SECRET, STORE_KEY = "steerd-store", "url"
# Keys of the Secret `<cluster>-app` that CloudNativePG generates for a Cluster.
CNPG_APP_KEYS = {"username", "password", "host", "port", "dbname", "uri", "jdbc-uri",
                 "pgpass"}

# Strategic-merge keys of the lists the manifests patch (Kubernetes' patchMergeKey).
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
    "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey", "tolerations": "key",
}
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "patches", "images"}


class ManifestError(AssertionError):
    pass


def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def res_id(doc):
    return (doc.get("kind"), doc.get("metadata", {}).get("name"))


# --- a small kustomize -------------------------------------------------------------------

def strategic_merge(dst, patch):
    """Merges patch into dst (dicts) the way a strategic-merge patch does for the
    fields above; returns the result, or None for `$patch: delete`."""
    if patch.get("$patch") == "delete":
        return None
    out = copy.deepcopy(dst)
    for key, value in patch.items():
        if key == "$patch":
            continue
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            merged = strategic_merge(out[key], value)
            if merged is None:
                out.pop(key)
            else:
                out[key] = merged
        elif (isinstance(value, list) and key in MERGE_KEYS
              and isinstance(out.get(key), list)):
            out[key] = merge_list(out[key], value, MERGE_KEYS[key])
        else:
            out[key] = strip_directives(copy.deepcopy(value))
    return out


def merge_list(dst, patch, merge_key):
    out = copy.deepcopy(dst)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise ManifestError(f"patch list item without {merge_key}: {item}")
        at = [i for i, d in enumerate(out) if d.get(merge_key) == item[merge_key]]
        if item.get("$patch") == "delete":
            if not at:
                raise ManifestError(f"$patch: delete of {item[merge_key]}, which is absent")
            del out[at[0]]
        elif at:
            out[at[0]] = strategic_merge(out[at[0]], item)
        else:
            out.append(strip_directives(copy.deepcopy(item)))
    return out


def strip_directives(value):
    if isinstance(value, dict):
        return {k: strip_directives(v) for k, v in value.items() if k != "$patch"}
    if isinstance(value, list):
        return [strip_directives(v) for v in value]
    return value


def pod_spec(doc):
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return doc["spec"]["template"]["spec"]
    return None


def build(directory, seen=()):
    """Returns the resources of the kustomization in `directory`, in order."""
    directory = Path(directory).resolve()
    if directory in seen:
        raise ManifestError(f"kustomization cycle through {directory}")
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise ManifestError(f"{directory} has no kustomization.yaml")
    (k,) = load_yaml_docs(kfile)
    unknown = set(k) - KUSTOMIZATION_FIELDS
    if unknown:
        raise ManifestError(f"{kfile}: fields this test does not implement: {unknown}")
    if k.get("kind") != "Kustomization":
        raise ManifestError(f"{kfile}: kind is not Kustomization")
    docs = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            docs.extend(build(path, seen + (directory,)))
        elif path.is_file():
            if directory not in path.parents:
                raise ManifestError(f"{kfile}: {entry} is outside the kustomization "
                                    "(kustomize refuses files above its root)")
            docs.extend(load_yaml_docs(path))
        else:
            raise ManifestError(f"{kfile}: resource {entry} does not exist")
    ids = [res_id(d) for d in docs]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise ManifestError(f"{kfile}: resources defined twice: {dupes}")
    for entry in k.get("patches", []):
        if set(entry) != {"path"}:
            raise ManifestError(f"{kfile}: only `- path: FILE` patches are implemented "
                                f"here, not {entry}")
        path = directory / entry["path"]
        if not path.is_file():
            raise ManifestError(f"{kfile}: patch {entry['path']} does not exist")
        for patch in load_yaml_docs(path):
            target = res_id(patch)
            at = [i for i, d in enumerate(docs) if res_id(d) == target]
            if not at:
                raise ManifestError(f"{path}: patches {target}, which {kfile} lacks")
            merged = strategic_merge(docs[at[0]], patch)
            if merged is None:
                del docs[at[0]]
            else:
                docs[at[0]] = merged
    for image in k.get("images", []):
        for doc in docs:
            spec = pod_spec(doc)
            for c in (spec or {}).get("containers", []) + (spec or {}).get("initContainers", []):
                name = re.split(r"[:@]", c["image"])[0]
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image.get('newTag', 'latest')}"
    return docs


def kustomization_dirs():
    return sorted(p.parent.relative_to(K8S).as_posix() for p in K8S.rglob("kustomization.yaml"))


# --- helpers -----------------------------------------------------------------------------

def entrypoint_flags():
    """The flags of the Dockerfile's ENTRYPOINT (exec form), e.g. {'listen': '0.0.0.0:50051'}."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    if not m:
        raise ManifestError("no exec-form ENTRYPOINT in the Dockerfile")
    argv = json.loads(m.group(1))
    flags = {}
    for i, a in enumerate(argv):
        if a.startswith("--"):
            flags[a[2:]] = argv[i + 1]
    return argv, flags


def arg_flags(args):
    """--name=value / --name value pairs of a container's args, in order."""
    out = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            if "=" in a:
                name, value = a[2:].split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                name, value = a[2:], args[i + 1]
                i += 1
            else:
                name, value = a[2:], None
            out.append((name, value))
        i += 1
    return out


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def secret_keys(docs):
    """{secret name: set of keys} from Secrets and CloudNativePG Clusters in docs."""
    keys = {}
    for d in docs:
        if d["kind"] == "Secret":
            keys[d["metadata"]["name"]] = set(d.get("data") or {}) | set(d.get("stringData") or {})
        if d["kind"] == "Cluster" and d["apiVersion"].startswith("postgresql.cnpg.io/"):
            keys[d["metadata"]["name"] + "-app"] = set(CNPG_APP_KEYS)
    return keys


def secret_value(docs, name, key):
    for d in docs:
        if d["kind"] == "Secret" and d["metadata"]["name"] == name:
            return (d.get("stringData") or {}).get(key)
    return None


def one(docs, kind, name):
    found = [d for d in docs if res_id(d) == (kind, name)]
    if len(found) != 1:
        raise ManifestError(f"expected one {kind} {name}, found {len(found)}")
    return found[0]


def container(deployment, name=CONTAINER):
    (c,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def env_map(c):
    return {e["name"]: e for e in c.get("env", [])}


def port_number(value):
    return int(value) if isinstance(value, int) or str(value).isdigit() else None


class Layouts(unittest.TestCase):
    """Builds every kustomization once."""

    @classmethod
    def setUpClass(cls):
        cls.renders = {d: build(K8S / d) for d in kustomization_dirs()}
        cls.entry_argv, cls.entry = entrypoint_flags()

    def layouts(self):
        return self.renders.items()


class FilesTest(Layouts):
    def test_the_documented_layouts_exist(self):
        self.assertEqual(sorted(self.renders), sorted(REPLICATED + [SINGLE]))

    def test_every_manifest_parses_and_is_used(self):
        used = set()
        for d in kustomization_dirs():
            kdir = K8S / d
            (k,) = load_yaml_docs(kdir / "kustomization.yaml")
            used.add((kdir / "kustomization.yaml").resolve())
            for entry in k.get("resources", []) + [p["path"] for p in k.get("patches", [])]:
                used.add((kdir / entry).resolve())
        files = sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml"))
        self.assertTrue(files)
        for path in files:
            with self.subTest(path=str(path.relative_to(ROOT))):
                docs = load_yaml_docs(path)  # raises on a YAML error
                self.assertTrue(docs, "empty manifest")
                for doc in docs:
                    self.assertIn("apiVersion", doc)
                    self.assertIn("kind", doc)
                    if doc["kind"] != "Kustomization":
                        self.assertTrue(doc.get("metadata", {}).get("name"), "no metadata.name")
                in_optional = (K8S / "optional") in path.parents
                self.assertTrue(path.resolve() in used or in_optional,
                                "no kustomization.yaml lists it (and it is not in optional/)")

    def test_the_ci_knows_pyyaml(self):
        text = (ROOT / "scripts" / "install-deps.sh").read_text(encoding="utf-8")
        self.assertRegex(text, r"\bpython3-yaml\b")


class DeploymentTest(Layouts):
    def test_grpc_probes_on_the_grpc_port(self):
        for name, docs in self.layouts():
            with self.subTest(layout=name):
                c = container(one(docs, "Deployment", DEPLOYMENT))
                ports = {p["name"]: p["containerPort"] for p in c["ports"]}
                self.assertIn("grpc", ports)
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    self.assertIn(probe, c)
                    self.assertIn("grpc", c[probe], f"{probe} is not a gRPC probe")
                    self.assertEqual(c[probe]["grpc"]["port"], ports["grpc"], probe)
                    self.assertIn(c[probe]["grpc"].get("service", ""), ("",),
                                  f"{probe} checks a named service, not the server")

    def test_ports_agree_with_the_entrypoint(self):
        listen = int(self.entry["listen"].rsplit(":", 1)[1])
        metrics = int(self.entry["metrics-listen"].rsplit(":", 1)[1])
        for name, docs in self.layouts():
            with self.subTest(layout=name):
                d = one(docs, "Deployment", DEPLOYMENT)
                ports = {p["name"]: p["containerPort"] for p in container(d)["ports"]}
                # The HTTP API's port comes from the Deployment's own --http-listen.
                http = dict(arg_flags(container(d).get("args", [])))["http-listen"]
                self.assertEqual(ports, {"grpc": listen, "http": int(http.rsplit(":", 1)[1]),
                                         "metrics": metrics})
                annotations = d["spec"]["template"]["metadata"].get("annotations", {})
                if "prometheus.io/port" in annotations:
                    self.assertEqual(int(annotations["prometheus.io/port"]), metrics)

    def test_args_do_not_repeat_flags(self):
        for name, docs in self.layouts():
            with self.subTest(layout=name):
                c = container(one(docs, "Deployment", DEPLOYMENT))
                self.assertNotIn("command", c, "command: replaces the ENTRYPOINT's flags; "
                                 "update this test if that is meant")
                names = [n for n, _ in arg_flags(c.get("args", []))]
                self.assertEqual(len(names), len(set(names)), f"a flag twice: {names}")
                self.assertFalse(set(names) & set(self.entry),
                                 "args repeat an ENTRYPOINT flag (steerd refuses that)")

    def test_variables_used_in_args_are_defined(self):
        for name, docs in self.layouts():
            with self.subTest(layout=name):
                c = container(one(docs, "Deployment", DEPLOYMENT))
                env = env_map(c)
                for a in c.get("args", []):
                    for var in re.findall(r"\$\((\w+)\)", a):
                        self.assertIn(var, env, f"{a} uses $({var}), not in env")

    def test_grace_period_exceeds_the_drain(self):
        for name, docs in self.layouts():
            with self.subTest(layout=name):
                d = one(docs, "Deployment", DEPLOYMENT)
                flags = dict(arg_flags(container(d).get("args", [])))
                drain = int(flags.get("drain-seconds", 30))
                grace = d["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
                self.assertGreater(grace, drain + 2, "SIGKILL before the drain ends")
                self.assertNotIn("lifecycle", container(d), "the drain needs no preStop hook")

    def test_selector_matches_the_pod_template(self):
        for name, docs in self.layouts():
            with self.subTest(layout=name):
                d = one(docs, "Deployment", DEPLOYMENT)
                labels = d["spec"]["template"]["metadata"]["labels"]
                self.assertTrue(labels_match(d["spec"]["selector"]["matchLabels"], labels))
                for t in d["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
                    self.assertTrue(labels_match(t["labelSelector"]["matchLabels"], labels))

    def test_tenants_file_is_mounted(self):
        for name, docs in self.layouts():
            with self.subTest(layout=name):
                d = one(docs, "Deployment", DEPLOYMENT)
                c = container(d)
                tenants = dict(arg_flags(c["args"]))["tenants"]
                mounts = [m for m in c.get("volumeMounts", [])
                          if tenants.startswith(m["mountPath"].rstrip("/") + "/")]
                self.assertEqual(len(mounts), 1, f"nothing mounted at {tenants}")
                (volume,) = [v for v in d["spec"]["template"]["spec"]["volumes"]
                             if v["name"] == mounts[0]["name"]]
                items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
                self.assertIn(Path(tenants).name, items)

    def test_secrets_read_exist(self):
        """Every Secret name and key a workload reads is defined in the same layout
        (a Secret manifest, or the one CloudNativePG generates for its Cluster)."""
        for name, docs in self.layouts():
            keys = secret_keys(docs)
            for doc in docs:
                spec = pod_spec(doc)
                if spec is None:
                    continue
                for c in spec.get("containers", []) + spec.get("initContainers", []):
                    for e in c.get("env", []):
                        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                        if ref:
                            with self.subTest(layout=name, workload=res_id(doc), env=e["name"]):
                                self.assertIn(ref["name"], keys, "no such Secret")
                                self.assertIn(ref["key"], keys[ref["name"]], "no such key")
                for v in spec.get("volumes", []):
                    if "secret" in v:
                        with self.subTest(layout=name, workload=res_id(doc), volume=v["name"]):
                            s = v["secret"]["secretName"]
                            self.assertIn(s, keys, "no such Secret")
                            for item in v["secret"].get("items", []):
                                self.assertIn(item["key"], keys[s])

    def test_persistent_volume_claims_exist(self):
        for name, docs in self.layouts():
            pvcs = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
            for doc in docs:
                for v in (pod_spec(doc) or {}).get("volumes", []):
                    if "persistentVolumeClaim" in v:
                        with self.subTest(layout=name, volume=v["name"]):
                            self.assertIn(v["persistentVolumeClaim"]["claimName"], pvcs)


class ReplicatedTest(Layouts):
    def deployments(self):
        for name in REPLICATED:
            yield name, self.renders[name], one(self.renders[name], "Deployment", DEPLOYMENT)

    def test_several_replicas_rolling_without_unavailability(self):
        for name, _, d in self.deployments():
            with self.subTest(layout=name):
                self.assertGreater(d["spec"].get("replicas", 1), 1)
                strategy = d["spec"]["strategy"]
                self.assertEqual(strategy["type"], "RollingUpdate")
                self.assertIn(strategy["rollingUpdate"]["maxUnavailable"], (0, "0%"))
                surge = strategy["rollingUpdate"]["maxSurge"]
                self.assertTrue(surge not in (0, "0%"), "maxSurge 0 with maxUnavailable 0")

    def test_no_data_volume(self):
        """Only read-only configuration (the tenants Secret) is mounted: no PVC, no
        emptyDir, no hostPath; the root filesystem is read-only."""
        for name, _, d in self.deployments():
            with self.subTest(layout=name):
                spec = d["spec"]["template"]["spec"]
                for v in spec.get("volumes", []):
                    kinds = set(v) - {"name"}
                    self.assertLessEqual(kinds, {"secret", "configMap", "projected"},
                                         f"volume {v['name']} is {kinds}")
                c = container(d)
                for m in c.get("volumeMounts", []):
                    self.assertTrue(m.get("readOnly"), f"{m['mountPath']} is writable")
                self.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
                self.assertNotIn("volumeClaimTemplates", d["spec"])

    def test_store_from_a_secret_and_replica_id_from_the_pod_name(self):
        for name, docs, d in self.deployments():
            with self.subTest(layout=name):
                c = container(d)
                env = env_map(c)
                ref = env["STEERD_STORE"]["valueFrom"]["secretKeyRef"]
                if ref["name"] == STORE_SECRET:
                    self.assertEqual(ref["key"], STORE_KEY)
                    url = secret_value(docs, STORE_SECRET, STORE_KEY)
                    self.assertRegex(url or "", r"^postgres(ql)?://", "not a libpq URI")
                self.assertEqual(env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
                                 "metadata.name")
                self.assertIn(("replica-id", "$(POD_NAME)"), arg_flags(c["args"]))
                self.assertNotIn("store", dict(arg_flags(c["args"])),
                                 "the URL belongs in the Secret, not in args")

    def test_base_store_secret_example(self):
        docs = self.renders["base"]
        url = secret_value(docs, STORE_SECRET, STORE_KEY)
        self.assertIsNotNone(url, f"base lacks the {STORE_SECRET} Secret with key {STORE_KEY}")
        self.assertIn("CHANGE-ME", url, "the example must stay an obvious placeholder")

    def test_dev_store_points_at_its_postgres(self):
        docs = self.renders["overlays/postgres-dev"]
        url = urllib.parse.urlsplit(secret_value(docs, STORE_SECRET, STORE_KEY))
        svc = one(docs, "Service", url.hostname)
        self.assertIn(url.port or 5432, [p["port"] for p in svc["spec"]["ports"]])
        sts = one(docs, "StatefulSet", url.hostname)
        self.assertEqual(sts["spec"]["replicas"], 1)
        env = env_map(sts["spec"]["template"]["spec"]["containers"][0])
        self.assertEqual(env["POSTGRES_USER"]["value"], url.username)
        self.assertEqual(env["POSTGRES_DB"]["value"], url.path.lstrip("/"))
        ref = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
        self.assertEqual(secret_value(docs, ref["name"], ref["key"]), url.password)
        self.assertRegex(sts["spec"]["template"]["spec"]["containers"][0]["image"],
                         r"^postgres:15\b")

    def test_cnpg_store_is_the_operators_secret(self):
        docs = self.renders["overlays/postgres-cnpg"]
        (cluster,) = [d for d in docs if d["kind"] == "Cluster"]
        self.assertEqual(cluster["apiVersion"], "postgresql.cnpg.io/v1")
        ref = env_map(container(one(docs, "Deployment", DEPLOYMENT)))["STEERD_STORE"]
        self.assertEqual(ref["valueFrom"]["secretKeyRef"],
                         {"name": cluster["metadata"]["name"] + "-app", "key": "uri"})
        self.assertNotIn(("Secret", STORE_SECRET), [res_id(d) for d in docs],
                         "the placeholder Secret would be applied but never read")


class SingleSqliteTest(Layouts):
    def test_one_replica_recreate_and_a_volume(self):
        _, flags = entrypoint_flags()
        docs = self.renders[SINGLE]
        d = one(docs, "Deployment", DEPLOYMENT)
        self.assertEqual(d["spec"]["replicas"], 1)
        self.assertEqual(d["spec"]["strategy"], {"type": "Recreate"})
        c = container(d)
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == flags["data-dir"]]
        (volume,) = [v for v in d["spec"]["template"]["spec"]["volumes"]
                     if v["name"] == mount["name"]]
        pvc = one(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        self.assertEqual(pvc["spec"]["accessModes"], ["ReadWriteOnce"])
        self.assertNotIn("STEERD_STORE", env_map(c))
        self.assertNotIn("store", dict(arg_flags(c["args"])))
        self.assertNotIn(("Secret", STORE_SECRET), [res_id(x) for x in docs])


class ServicesTest(Layouts):
    def test_services_select_pods_and_target_their_ports(self):
        for name, docs in self.layouts():
            workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
            for svc in [d for d in docs if d["kind"] == "Service"]:
                with self.subTest(layout=name, service=svc["metadata"]["name"]):
                    selector = svc["spec"].get("selector")
                    matched = [w for w in workloads if labels_match(
                        selector, w["spec"]["template"]["metadata"]["labels"])]
                    self.assertEqual(len(matched), 1, "selects no workload, or several")
                    containers = matched[0]["spec"]["template"]["spec"]["containers"]
                    cports = [p for c in containers for p in c.get("ports", [])]
                    for p in svc["spec"]["ports"]:
                        target = p.get("targetPort", p["port"])
                        number = port_number(target)
                        found = [c for c in cports if (c.get("name") == target if number is None
                                                       else c["containerPort"] == number)]
                        self.assertTrue(found, f"targetPort {target} is no container port")

    def test_the_services_of_steerd(self):
        for name, docs in self.layouts():
            with self.subTest(layout=name):
                pods = one(docs, "Deployment", DEPLOYMENT)["spec"]["template"]["metadata"]["labels"]
                svc = one(docs, "Service", DEPLOYMENT)
                self.assertIn(svc["spec"].get("type", "ClusterIP"), ("ClusterIP",))
                self.assertNotEqual(svc["spec"].get("clusterIP"), "None")
                self.assertEqual({p["name"]: p["port"] for p in svc["spec"]["ports"]},
                                 {"grpc": 50051, "http": 8080, "metrics": 9090})
                self.assertTrue(labels_match(svc["spec"]["selector"], pods))
                headless = one(docs, "Service", HEADLESS)
                self.assertEqual(headless["spec"].get("clusterIP"), "None")
                self.assertTrue(labels_match(headless["spec"]["selector"], pods))
                self.assertFalse(headless["spec"].get("publishNotReadyAddresses", False),
                                 "clients would be sent to pods that are not Ready")
                ports = {p["port"]: p for p in headless["spec"]["ports"]}
                self.assertIn(50051, ports)
                self.assertEqual(ports[50051].get("targetPort"), "grpc")

    def test_pod_disruption_budget(self):
        for name, docs in self.layouts():
            with self.subTest(layout=name):
                d = one(docs, "Deployment", DEPLOYMENT)
                pdbs = [x for x in docs if x["kind"] == "PodDisruptionBudget"
                        and labels_match(x["spec"]["selector"]["matchLabels"],
                                         d["spec"]["template"]["metadata"]["labels"])]
                self.assertEqual(len(pdbs), 1, "no (or several) PDB selecting the pods")
                pdb = pdbs[0]
                self.assertEqual(pdb["apiVersion"], "policy/v1")
                self.assertEqual(pdb["spec"]["selector"]["matchLabels"],
                                 d["spec"]["selector"]["matchLabels"])
                budget = {k: pdb["spec"][k] for k in ("minAvailable", "maxUnavailable")
                          if k in pdb["spec"]}
                self.assertEqual(len(budget), 1, "set one of minAvailable / maxUnavailable")
                replicas = d["spec"].get("replicas", 1)
                if "minAvailable" in budget:
                    self.assertLess(budget["minAvailable"], replicas,
                                    "minAvailable >= replicas blocks every node drain")
                else:
                    self.assertNotIn(budget["maxUnavailable"], (0, "0%"),
                                     "maxUnavailable 0 blocks every node drain")


class OptionalTest(Layouts):
    def optional(self, filename):
        (doc,) = load_yaml_docs(K8S / "optional" / filename)
        return doc

    def test_hpa_targets_the_deployment_on_real_gauges(self):
        hpa = self.optional("hpa.yaml")
        self.assertEqual(hpa["apiVersion"], "autoscaling/v2")
        self.assertEqual(hpa["kind"], "HorizontalPodAutoscaler")
        ref = hpa["spec"]["scaleTargetRef"]
        d = one(self.renders["base"], "Deployment", DEPLOYMENT)
        self.assertEqual((ref["apiVersion"], ref["kind"], ref["name"]),
                         (d["apiVersion"], d["kind"], d["metadata"]["name"]))
        self.assertGreaterEqual(hpa["spec"]["minReplicas"], 2)
        self.assertLessEqual(hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])
        gauges = set(re.findall(r'BuildGauge\(\)\s*\.Name\("(\w+)"\)',
                                METRICS_CC.read_text(encoding="utf-8")))
        self.assertIn("steerd_queue_depth", gauges, "metrics.cc changed: update this test")
        pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]
                        if m["type"] == "Pods"]
        self.assertTrue(pods_metrics, "no Pods metric")
        for metric in pods_metrics:
            self.assertIn(metric, gauges, f"{metric} is not a gauge in {METRICS_CC.name}")

    def test_servicemonitor_scrapes_each_pod_once(self):
        sm = self.optional("servicemonitor.yaml")
        for name, docs in self.layouts():
            with self.subTest(layout=name):
                services = [d for d in docs if d["kind"] == "Service" and labels_match(
                    sm["spec"]["selector"]["matchLabels"], d["metadata"].get("labels", {}))]
                for endpoint in sm["spec"]["endpoints"]:
                    having = [s["metadata"]["name"] for s in services
                              if endpoint["port"] in [p.get("name") for p in s["spec"]["ports"]]]
                    self.assertEqual(having, [DEPLOYMENT],
                                     f"port {endpoint['port']} scraped through {having}")

    def test_migrate_job_reads_the_store_secret(self):
        job = self.optional("migrate-job.yaml")
        (c,) = job["spec"]["template"]["spec"]["containers"]
        self.assertEqual(c["command"][:2], ["steerd", "migrate"])
        ref = env_map(c)["STEERD_STORE"]["valueFrom"]["secretKeyRef"]
        self.assertEqual((ref["name"], ref["key"]), (STORE_SECRET, STORE_KEY))
        self.assertIn(STORE_KEY, secret_keys(self.renders["base"])[STORE_SECRET])


def normalise(value, key=None):
    """Associative lists sorted by their merge key, so that order does not matter."""
    if isinstance(value, dict):
        return {k: normalise(v, k) for k, v in value.items()}
    if isinstance(value, list):
        items = [normalise(v) for v in value]
        if key in MERGE_KEYS and all(isinstance(i, dict) for i in items):
            items.sort(key=lambda i: str(i.get(MERGE_KEYS[key])))
        return items
    return value


@unittest.skipUnless(shutil.which("kubectl"), "kubectl is not installed")
class AgreesWithKustomizeTest(Layouts):
    def test_same_output_as_kubectl_kustomize(self):
        for name, docs in self.layouts():
            with self.subTest(layout=name):
                run = subprocess.run(["kubectl", "kustomize", str(K8S / name)],
                                     capture_output=True, text=True, timeout=120)
                self.assertEqual(run.returncode, 0, run.stderr)
                theirs = {res_id(d): normalise(d) for d in yaml.safe_load_all(run.stdout) if d}
                ours = {res_id(d): normalise(d) for d in docs}
                self.assertEqual(sorted(ours), sorted(theirs))
                for rid in ours:
                    self.assertEqual(ours[rid], theirs[rid], rid)


if __name__ == "__main__":
    unittest.main(verbosity=2)
