// Reads [{where, object}] as JSON on stdin; validates each custom resource against the schema of its CRD
// (the @kubernetes-models packages generate them from the CRDs). Prints one line per object; exit 1 on any error.
import { ServiceMonitor, PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1";

const KINDS = {
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
  "keda.sh/v1alpha1/ScaledObject": ScaledObject,
};
let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = 0;
for (const { where, object } of JSON.parse(input)) {
  const Model = KINDS[`${object.apiVersion}/${object.kind}`];
  if (!Model) {
    console.log(`${where}: no schema for ${object.apiVersion} ${object.kind}`);
    failed += 1;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`${where}: valid`);
  } catch (error) {
    console.log(`${where}: ${error.message}`);
    failed += 1;
  }
}
process.exit(failed ? 1 : 0);
