// Offline checks of the rendered manifests (kubectl kustomize output), for tests/deploy/run_tests.sh.
//
//   node validate.mjs schema FILE...            every object against the Kubernetes schemas
//                                               (kubernetes-models, @kubernetes-models/prometheus-operator):
//                                               types, required fields, enums, and no unknown field
//   node validate.mjs security FILE             the DaemonSet's security settings, RBAC, Service
//   node validate.mjs wiring BASE MONITORING    the ServiceMonitor selects the Service and its port
//   node validate.mjs mutate list               names of the deliberate bugs
//   node validate.mjs mutate NAME IN OUT        writes IN with bug NAME to OUT
//
// Prints what is wrong, one line each; exits 1 if anything is.
import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import YAML from "yaml";

const here = dirname(fileURLToPath(import.meta.url));
// The file of a module specifier ("kubernetes-models/apps/v1/DaemonSet"): the packages are
// installed flat in tests/deploy/node_modules, their files named after their export paths.
function resolveFile(specifier) {
  const direct = join(here, "node_modules", specifier.endsWith(".js") ? specifier : specifier + ".js");
  if (existsSync(direct)) return direct;
  throw new Error(`cannot find ${specifier} in ${join(here, "node_modules")}`);
}

function loadDocs(file) {
  return YAML.parseAllDocuments(readFileSync(file, "utf8"))
    .map((d) => {
      if (d.errors.length) throw new Error(`${file}: ${d.errors[0].message}`);
      return d.toJS();
    })
    .filter((d) => d !== null && d !== undefined);
}

const idOf = (o) => `${o.kind}/${o.metadata?.namespace ? o.metadata.namespace + "/" : ""}${o.metadata?.name}`;

// ---- schema -------------------------------------------------------------------------------------

// The model module of an object: kubernetes-models/<apiVersion>/<Kind> ("v1/Service",
// "apps/v1/DaemonSet"), @kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/<Kind>.
function modelPath(o) {
  if (typeof o.apiVersion !== "string" || typeof o.kind !== "string") return null;
  if (o.apiVersion.startsWith("monitoring.coreos.com/")) {
    return `@kubernetes-models/prometheus-operator/${o.apiVersion}/${o.kind}`;
  }
  return `kubernetes-models/${o.apiVersion}/${o.kind}`;
}

// The models' compiled validators accept fields they do not know; the API server's strict field
// validation (kubectl's default) does not. So the field names are checked against the models'
// type declarations (.d.ts): each interface lists its fields and their types.
const interfaceCache = new Map(); // .d.ts path -> { fields: Map(name -> type text), imports: Map }

function parseDts(file) {
  if (interfaceCache.has(file)) return interfaceCache.get(file);
  const text = readFileSync(file, "utf8").replace(/\/\*\*[\s\S]*?\*\//g, "");
  const imports = new Map();
  for (const m of text.matchAll(/import \{ ([^}]+) \} from "([^"]+)";/g)) {
    for (const name of m[1].split(",").map((s) => s.trim())) imports.set(name, m[2]);
  }
  let parsed = null;
  const head = text.match(/export interface \w+(?: extends ([\w, ]+))? \{/);
  if (head) {
    let depth = 0;
    let i = head.index + head[0].length - 1;
    const bodyStart = i + 1;
    for (; i < text.length; ++i) {
      if (text[i] === "{") depth++;
      if (text[i] === "}" && --depth === 0) break;
    }
    const body = text.slice(bodyStart, i);
    const fields = new Map();
    parsed = { fields, imports, file };
    interfaceCache.set(file, parsed);  // before the bases: no endless recursion
    // Inherited fields: TypeMeta (apiVersion, kind) or another model's interface.
    for (const base of (head[1] ?? "").split(",").map((b) => b.trim()).filter(Boolean)) {
      if (base === "TypeMeta") {
        fields.set("apiVersion", "string");
        fields.set("kind", "string");
      } else if (imports.has(base)) {
        const dts = dtsOf(imports.get(base), file);
        const inherited = dts && parseDts(dts);
        if (!inherited) throw new Error(`${file}: cannot read the interface ${base} it extends`);
        for (const [k, v] of inherited.fields) fields.set(k, v);
        for (const [k, v] of inherited.imports) if (!imports.has(k)) imports.set(k, v);
      }
    }
    // Top-level members only: "name"?: Type; where Type may span lines ({ [key: string]: X; }).
    let d = 0;
    let member = "";
    for (const ch of body) {
      if (ch === "{" || ch === "<" || ch === "(") d++;
      if (ch === "}" || ch === ">" || ch === ")") d--;
      if (ch === ";" && d === 0) {
        const m = member.trim().match(/^"?([^"?:]+)"?\??:\s*([\s\S]+)$/);
        if (m) fields.set(m[1], m[2].trim());
        member = "";
      } else {
        member += ch;
      }
    }
    return parsed;
  }
  interfaceCache.set(file, parsed);
  return parsed;
}

function dtsOf(specifier, fromFile) {
  let target;
  if (specifier.startsWith(".")) {
    target = join(dirname(fromFile), specifier);
  } else {
    try {
      target = resolveFile(specifier);
    } catch {
      return null;
    }
  }
  const dts = target.replace(/\.js$/, ".d.ts");
  return existsSync(dts) ? dts : null;
}

function unknownFields(value, iface, path, out) {
  if (!iface || value === null || typeof value !== "object" || Array.isArray(value)) return;
  for (const [key, child] of Object.entries(value)) {
    if (!iface.fields.has(key)) {
      out.push(`${path}.${key}: unknown field`);
      continue;
    }
    checkType(child, iface.fields.get(key), iface, `${path}.${key}`, out);
  }
}

function checkType(value, type, iface, path, out) {
  const array = type.match(/^Array<(\w+)>$/);
  if (array && Array.isArray(value)) {
    value.forEach((item, i) => checkType(item, array[1], iface, `${path}[${i}]`, out));
    return;
  }
  const map = type.match(/^\{\s*\[key: string\]: (\w+);\s*\}$/);
  if (map && value && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) checkType(v, map[1], iface, `${path}.${k}`, out);
    return;
  }
  if (/^\w+$/.test(type) && iface.imports.has(type)) {
    const dts = dtsOf(iface.imports.get(type), iface.file);
    if (dts) unknownFields(value, parseDts(dts), path, out);
  }
}

async function schema(files) {
  const problems = [];
  let count = 0;
  for (const file of files) {
    for (const o of loadDocs(file)) {
      ++count;
      const id = idOf(o);
      const path = modelPath(o);
      let Model;
      try {
        Model = path && (await import(path))[o.kind];
      } catch {
        Model = null;
      }
      if (!Model) {
        problems.push(`${id}: no schema for apiVersion ${o.apiVersion} kind ${o.kind}`);
        continue;
      }
      try {
        new Model(o).validate();
      } catch (e) {
        problems.push(`${id}: ${e.message}`);
      }
      const dts = resolveFile(path).replace(/\.js$/, ".d.ts");
      const fieldProblems = [];
      const top = parseDts(dts);
      if (!top) fieldProblems.push(`cannot read the field declarations of ${path}`);
      unknownFields(o, top, o.kind, fieldProblems);
      for (const p of fieldProblems) problems.push(`${id}: ${p}`);
    }
  }
  if (count === 0) problems.push("no objects rendered");
  return { problems, summary: `${count} objects valid` };
}

// ---- security -----------------------------------------------------------------------------------

// What the DaemonSet's container adds, and why (each is commented in deploy/daemonset.yaml;
// tests/bpf/privileges_bpf_test.cpp proves the agent needs exactly these).
const CAPABILITIES = ["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE"];
const ARGS = ["run", "--kubernetes", "--pod-selector", "app=envoy-gateway", "--metrics-address",
  "0.0.0.0:9464", "--log-format", "json", "--host-proc", "/host/proc"];
const COMMAND = ["nsenter", "--cgroup=/host/proc/1/ns/cgroup", "--", "/usr/local/bin/capturewatch"];
// Host paths the pod may mount, where, and read-only.
const HOST_PATHS = { "/proc": "/host/proc", "/sys/fs/cgroup": "/sys/fs/cgroup", "/sys/kernel/btf": "/sys/kernel/btf" };

// Deep equality, object keys in any order.
function canonical(v) {
  if (Array.isArray(v)) return v.map(canonical);
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical(v[k])]));
  }
  return v;
}
function same(a, b) {
  return JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));
}

function security(file) {
  const docs = loadDocs(file);
  const problems = [];
  const want = (cond, what) => {
    if (!cond) problems.push(what);
  };
  const byKind = (kind) => docs.filter((d) => d.kind === kind);

  want(same(docs.map((d) => d.kind).sort(), ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "Namespace", "Service", "ServiceAccount"]),
    `objects: ${docs.map(idOf).join(", ")}; want exactly Namespace, ServiceAccount, ClusterRole, ClusterRoleBinding, DaemonSet, Service`);
  for (const d of docs) {
    if (!["Namespace", "ClusterRole", "ClusterRoleBinding"].includes(d.kind)) {
      want(d.metadata?.namespace === "capturewatch", `${idOf(d)}: not in namespace capturewatch`);
    }
    want(d.metadata?.labels?.["app.kubernetes.io/name"] === "capturewatch", `${idOf(d)}: no label app.kubernetes.io/name=capturewatch`);
  }

  // RBAC: get/list/watch on pods, nothing else, bound to the agent's ServiceAccount only.
  const roles = byKind("ClusterRole");
  want(roles.length === 1, "want one ClusterRole");
  for (const r of roles) {
    want(same(r.rules, [{ apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "watch"] }]),
      `ClusterRole rules ${JSON.stringify(r.rules)}; want exactly get, list, watch on pods`);
    want(!r.aggregationRule, "ClusterRole must not aggregate other roles");
  }
  for (const b of byKind("ClusterRoleBinding").concat(byKind("RoleBinding"))) {
    want(b.roleRef?.kind === "ClusterRole" && b.roleRef?.name === roles[0]?.metadata?.name,
      `${idOf(b)}: binds ${JSON.stringify(b.roleRef)}`);
    want(same(b.subjects, [{ kind: "ServiceAccount", name: "capturewatch", namespace: "capturewatch" }]),
      `${idOf(b)}: subjects ${JSON.stringify(b.subjects)}; want the capturewatch ServiceAccount only`);
  }

  const dss = byKind("DaemonSet");
  want(dss.length === 1, "want one DaemonSet");
  const ds = dss[0] ?? {};
  const pod = ds.spec?.template?.spec ?? {};
  const labels = ds.spec?.template?.metadata?.labels ?? {};
  want(labels["app.kubernetes.io/name"] === "capturewatch", "pod template: no label app.kubernetes.io/name=capturewatch");
  want(same(ds.spec?.selector?.matchLabels, { "app.kubernetes.io/name": "capturewatch" }), "selector must be app.kubernetes.io/name=capturewatch");
  want(pod.serviceAccountName === "capturewatch", `serviceAccountName ${pod.serviceAccountName}`);
  for (const ns of ["hostPID", "hostNetwork", "hostIPC"]) want(pod[ns] !== true, `${ns} must not be true`);
  want(same(pod.tolerations, [{ operator: "Exists" }]), `tolerations ${JSON.stringify(pod.tolerations)}; want [{operator: Exists}] (every node)`);
  want(!pod.initContainers?.length && !pod.ephemeralContainers?.length, "no init or ephemeral containers");
  want(!pod.securityContext?.sysctls?.length, "no sysctls");

  const containers = pod.containers ?? [];
  want(containers.length === 1, "want one container");
  const c = containers[0] ?? {};
  const sc = c.securityContext ?? {};
  want(sc.privileged !== true, "privileged must not be true");
  want(same(sc.capabilities?.drop, ["ALL"]), `capabilities.drop ${JSON.stringify(sc.capabilities?.drop)}; want [ALL]`);
  want(same(sc.capabilities?.add, CAPABILITIES), `capabilities.add ${JSON.stringify(sc.capabilities?.add)}; want exactly ${JSON.stringify(CAPABILITIES)}`);
  want(sc.readOnlyRootFilesystem === true, "readOnlyRootFilesystem must be true");
  want(sc.allowPrivilegeEscalation === false, "allowPrivilegeEscalation must be false");
  want(sc.procMount === undefined || sc.procMount === "Default", "procMount must stay Default");
  want(sc.seccompProfile?.type === "RuntimeDefault", `seccompProfile ${JSON.stringify(sc.seccompProfile)}; want RuntimeDefault`);
  want(!sc.seLinuxOptions, "no seLinuxOptions in the base manifests");
  want(pod.securityContext?.seccompProfile?.type !== "Unconfined", "pod seccompProfile must not be Unconfined");

  want(same(c.command, COMMAND), `command ${JSON.stringify(c.command)}; want ${JSON.stringify(COMMAND)}`);
  want(same(c.args, ARGS), `args ${JSON.stringify(c.args)}; want ${JSON.stringify(ARGS)}`);
  const env = c.env ?? [];
  const node = env.find((e) => e.name === "NODE_NAME");
  want(same(node?.valueFrom, { fieldRef: { fieldPath: "spec.nodeName" } }),
    `NODE_NAME ${JSON.stringify(node)}; want valueFrom.fieldRef.fieldPath spec.nodeName`);
  want(!(c.envFrom?.length), "no envFrom");
  want(same(c.ports, [{ name: "metrics", containerPort: 9464, protocol: "TCP" }]), `ports ${JSON.stringify(c.ports)}`);
  want(!c.ports?.some((p) => p.hostPort), "no hostPort");
  for (const [probe, path] of [["livenessProbe", "/healthz"], ["readinessProbe", "/readyz"]]) {
    const h = c[probe]?.httpGet;
    want(h?.path === path && (h?.port === "metrics" || h?.port === 9464), `${probe} ${JSON.stringify(c[probe])}; want GET ${path} on 9464`);
  }
  const res = c.resources ?? {};
  want(res.requests?.cpu === "200m", `requests.cpu ${res.requests?.cpu}; want 200m`);
  want(res.limits?.memory === "128Mi", `limits.memory ${res.limits?.memory}; want 128Mi`);
  want(typeof res.requests?.memory === "string", "requests.memory must be set");

  // Volumes: only the host paths the agent reads, each mounted read-only where the agent looks.
  const volumes = pod.volumes ?? [];
  const mounts = c.volumeMounts ?? [];
  for (const v of volumes) {
    const kinds = Object.keys(v).filter((k) => k !== "name");
    want(same(kinds, ["hostPath"]), `volume ${v.name}: ${kinds.join(",")}; only hostPath volumes expected`);
    if (!v.hostPath) continue;
    const where = HOST_PATHS[v.hostPath.path];
    want(where !== undefined, `volume ${v.name}: host path ${v.hostPath.path} is not one the agent reads`);
    const m = mounts.filter((m) => m.name === v.name);
    want(m.length === 1 && m[0].mountPath === where && m[0].readOnly === true && !m[0].subPath,
      `volume ${v.name} (${v.hostPath.path}): mounted ${JSON.stringify(m)}; want read-only at ${where}`);
    want(!m[0]?.mountPropagation || m[0].mountPropagation === "None", `volume ${v.name}: no mount propagation`);
  }
  want(same(volumes.map((v) => v.hostPath?.path).sort(), Object.keys(HOST_PATHS).sort()),
    `host paths ${JSON.stringify(volumes.map((v) => v.hostPath?.path))}; want ${JSON.stringify(Object.keys(HOST_PATHS))}`);
  want(mounts.every((m) => volumes.some((v) => v.name === m.name)), "a volumeMount without its volume");

  const svcs = byKind("Service");
  want(svcs.length === 1, "want one Service");
  const svc = svcs[0] ?? {};
  want(svc.metadata?.name === "capturewatch", "the Service must be named capturewatch (deploy/monitoring expects it)");
  want(same(svc.spec?.selector, { "app.kubernetes.io/name": "capturewatch" }), `Service selector ${JSON.stringify(svc.spec?.selector)}`);
  want(same(svc.spec?.ports, [{ name: "metrics", port: 9464, targetPort: "metrics", protocol: "TCP" }]), `Service ports ${JSON.stringify(svc.spec?.ports)}`);
  want(!["NodePort", "LoadBalancer"].includes(svc.spec?.type), "the Service must not be exposed outside the cluster");

  const nss = byKind("Namespace");
  want(nss[0]?.metadata?.name === "capturewatch", "namespace capturewatch");
  return { problems, summary: "security settings as intended" };
}

// ---- wiring of deploy/monitoring to deploy/ -----------------------------------------------------

function wiring(baseFile, monitoringFile) {
  const base = loadDocs(baseFile);
  const mon = loadDocs(monitoringFile);
  const problems = [];
  const svc = base.find((d) => d.kind === "Service");
  const pod = base.find((d) => d.kind === "DaemonSet")?.spec?.template;
  for (const sm of mon.filter((d) => d.kind === "ServiceMonitor")) {
    const sel = sm.spec?.selector?.matchLabels ?? {};
    const labels = svc?.metadata?.labels ?? {};
    if (!Object.entries(sel).every(([k, v]) => labels[k] === v)) problems.push(`${idOf(sm)} selects ${JSON.stringify(sel)}, the Service has ${JSON.stringify(labels)}`);
    const nss = sm.spec?.namespaceSelector?.matchNames ?? [sm.metadata?.namespace];
    if (!nss.includes(svc?.metadata?.namespace)) problems.push(`${idOf(sm)} looks in ${nss}, the Service is in ${svc?.metadata?.namespace}`);
    for (const ep of sm.spec?.endpoints ?? []) {
      if (!svc?.spec?.ports?.some((p) => p.name === ep.port)) problems.push(`${idOf(sm)}: endpoint port ${ep.port} is not a port of the Service`);
      if (ep.path && ep.path !== "/metrics") problems.push(`${idOf(sm)}: path ${ep.path}`);
    }
  }
  if (!mon.some((d) => d.kind === "ServiceMonitor")) problems.push("deploy/monitoring renders no ServiceMonitor");
  const selector = svc?.spec?.selector ?? {};
  if (!Object.entries(selector).every(([k, v]) => pod?.metadata?.labels?.[k] === v)) problems.push("the Service does not select the agent's pods");
  const target = svc?.spec?.ports?.[0]?.targetPort;
  if (!pod?.spec?.containers?.some((c) => c.ports?.some((p) => p.name === target || p.containerPort === target))) problems.push(`the Service's targetPort ${target} is not a port of the agent`);
  return { problems, summary: "ServiceMonitor -> Service -> agent pods wired" };
}

// ---- deliberate bugs the checks must catch -------------------------------------------------------

const dsContainer = (docs) => docs.find((d) => d.kind === "DaemonSet").spec.template.spec.containers[0];
const MUTANTS = {
  "privileged": (docs) => { dsContainer(docs).securityContext.privileged = true; },
  "extra-capability": (docs) => { dsContainer(docs).securityContext.capabilities.add.push("BPF"); },
  "missing-capability": (docs) => { dsContainer(docs).securityContext.capabilities.add.pop(); },
  "no-drop-all": (docs) => { delete dsContainer(docs).securityContext.capabilities.drop; },
  "writable-root": (docs) => { dsContainer(docs).securityContext.readOnlyRootFilesystem = false; },
  "escalation": (docs) => { dsContainer(docs).securityContext.allowPrivilegeEscalation = true; },
  "host-pid": (docs) => { docs.find((d) => d.kind === "DaemonSet").spec.template.spec.hostPID = true; },
  "writable-proc": (docs) => { dsContainer(docs).volumeMounts[0].readOnly = false; },
  "host-root": (docs) => { const s = docs.find((d) => d.kind === "DaemonSet").spec.template.spec; s.volumes.push({ name: "root", hostPath: { path: "/" } }); dsContainer(docs).volumeMounts.push({ name: "root", mountPath: "/host", readOnly: true }); },
  "liveness-path": (docs) => { dsContainer(docs).livenessProbe.httpGet.path = "/metrics"; },
  "no-readiness": (docs) => { delete dsContainer(docs).readinessProbe; },
  "no-memory-limit": (docs) => { delete dsContainer(docs).resources.limits; },
  "node-name-literal": (docs) => { const e = dsContainer(docs).env.find((e) => e.name === "NODE_NAME"); delete e.valueFrom; e.value = "node-1"; },
  "no-tolerations": (docs) => { delete docs.find((d) => d.kind === "DaemonSet").spec.template.spec.tolerations; },
  "rbac-create": (docs) => { docs.find((d) => d.kind === "ClusterRole").rules[0].verbs.push("create"); },
  "rbac-secrets": (docs) => { docs.find((d) => d.kind === "ClusterRole").rules[0].resources.push("secrets"); },
  "rbac-wildcard": (docs) => { docs.find((d) => d.kind === "ClusterRole").rules.push({ apiGroups: ["*"], resources: ["*"], verbs: ["*"] }); },
  "service-port-name": (docs) => { docs.find((d) => d.kind === "Service").spec.ports[0].name = "http"; },
  // Schema-level bugs: the schema check must reject these.
  "schema-typo-field": (docs) => { const sc = dsContainer(docs).securityContext; sc.readOnlyRootFileSystem = sc.readOnlyRootFilesystem; delete sc.readOnlyRootFilesystem; },
  "schema-wrong-type": (docs) => { dsContainer(docs).ports[0].containerPort = "9464"; },
  "schema-bad-enum": (docs) => { dsContainer(docs).securityContext.seccompProfile.type = "Default"; },
  "schema-missing-required": (docs) => { delete dsContainer(docs).name; },
};

function mutate(name, input, output) {
  const docs = loadDocs(input);
  MUTANTS[name](docs);
  writeFileSync(output, docs.map((d) => YAML.stringify(d)).join("---\n"));
}

// ---- main ---------------------------------------------------------------------------------------

const [cmd, ...rest] = process.argv.slice(2);
let result;
try {
  if (cmd === "schema") result = await schema(rest);
  else if (cmd === "security") result = security(rest[0]);
  else if (cmd === "wiring") result = wiring(rest[0], rest[1]);
  else if (cmd === "mutate" && rest[0] === "list") {
    console.log(Object.keys(MUTANTS).join("\n"));
    process.exit(0);
  } else if (cmd === "mutate" && MUTANTS[rest[0]]) {
    mutate(rest[0], rest[1], rest[2]);
    process.exit(0);
  } else {
    console.error("usage: node validate.mjs schema FILE... | security FILE | wiring BASE MONITORING | mutate list | mutate NAME IN OUT");
    process.exit(2);
  }
} catch (e) {
  console.error(e.stack || String(e));
  process.exit(1);
}
for (const p of result.problems) console.log(p);
if (result.problems.length === 0) console.log(result.summary);
process.exit(result.problems.length ? 1 : 0);
