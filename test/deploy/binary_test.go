package deploy

import (
	"os"
	"path/filepath"
	"testing"
)

// TestBuiltBinary builds tnsguard once, with the Dockerfile's own build command in a
// copy of the Docker build context, and checks what the deployment files rely on.
// One build for all subtests: the first one takes about a minute on a cold cache.
func TestBuiltBinary(t *testing.T) {
	const version = "9.8.7-deploytest"
	bin := buildLikeDockerfile(t, version)

	t.Run("static", func(t *testing.T) { checkStatic(t, bin, version) })
	t.Run("shipped-configs-pass-check", func(t *testing.T) { checkShippedConfigs(t, bin) })
	t.Run("metrics-live", func(t *testing.T) { checkMetricsLive(t, bin, version) })
	t.Run("systemd-low-port", func(t *testing.T) { checkSystemdLowPort(t, bin) })
}

// checkShippedConfigs runs `tnsguard check` on the configs the image and the
// Kubernetes ConfigMap ship: a key the binary does not know would stop the container.
func checkShippedConfigs(t *testing.T, bin string) {
	root := repoRoot(t)
	files := []string{filepath.Join(root, "configs/docker/tnsguard.toml")}

	const cm = "configs/kubernetes/configmap.yaml"
	var docs []k8sObject
	decodeYAML(t, loadYAML(t, cm), cm, &docs)
	if len(docs) != 1 || docs[0].Data["tnsguard.toml"] == "" {
		t.Fatalf("%s: want one ConfigMap with tnsguard.toml", cm)
	}
	p := filepath.Join(t.TempDir(), "configmap-tnsguard.toml")
	if err := os.WriteFile(p, []byte(docs[0].Data["tnsguard.toml"]), 0o644); err != nil {
		t.Fatal(err)
	}
	files = append(files, p)

	for _, f := range files {
		out, err := runCmd(t, "", nil, bin, "check", "-config", f)
		if err != nil {
			t.Errorf("tnsguard check -config %s: %v\n%s", f, err, out)
		} else {
			t.Logf("%s", out)
		}
	}
}
