package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// k8sObject is the part of a Kubernetes object these tests read (all kinds at once).
type k8sObject struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Data map[string]string `json:"data"` // ConfigMap
	Spec struct {
		Replicas *int `json:"replicas"` // Deployment
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"` // Deployment, PodMonitor, PodDisruptionBudget
		Template struct {
			Metadata struct {
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
			Spec k8sPodSpec `json:"spec"`
		} `json:"template"`
		// Service
		Type  string `json:"type"`
		Ports []struct {
			Name       string `json:"name"`
			Port       int    `json:"port"`
			TargetPort any    `json:"targetPort"`
		} `json:"ports"`
		// PodMonitor
		JobLabel            string `json:"jobLabel"`
		PodMetricsEndpoints []struct {
			Port string `json:"port"`
			Path string `json:"path"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

type k8sPodSpec struct {
	TerminationGracePeriodSeconds *int `json:"terminationGracePeriodSeconds"`
	SecurityContext               struct {
		RunAsNonRoot *bool `json:"runAsNonRoot"`
		RunAsUser    *int  `json:"runAsUser"`
	} `json:"securityContext"`
	Containers []struct {
		Name  string   `json:"name"`
		Image string   `json:"image"`
		Args  []string `json:"args"`
		Ports []struct {
			Name          string `json:"name"`
			ContainerPort int    `json:"containerPort"`
		} `json:"ports"`
		LivenessProbe  *k8sProbe `json:"livenessProbe"`
		ReadinessProbe *k8sProbe `json:"readinessProbe"`
		Lifecycle      struct {
			PreStop struct {
				Sleep *struct {
					Seconds int `json:"seconds"`
				} `json:"sleep"`
				Exec *struct {
					Command []string `json:"command"`
				} `json:"exec"`
			} `json:"preStop"`
		} `json:"lifecycle"`
		Resources struct {
			Requests map[string]string `json:"requests"`
			Limits   map[string]string `json:"limits"`
		} `json:"resources"`
		SecurityContext struct {
			RunAsNonRoot             *bool `json:"runAsNonRoot"`
			ReadOnlyRootFilesystem   *bool `json:"readOnlyRootFilesystem"`
			AllowPrivilegeEscalation *bool `json:"allowPrivilegeEscalation"`
			Capabilities             struct {
				Drop []string `json:"drop"`
			} `json:"capabilities"`
		} `json:"securityContext"`
		VolumeMounts []struct {
			Name      string `json:"name"`
			MountPath string `json:"mountPath"`
		} `json:"volumeMounts"`
	} `json:"containers"`
	Volumes []struct {
		Name      string `json:"name"`
		ConfigMap *struct {
			Name string `json:"name"`
		} `json:"configMap"`
	} `json:"volumes"`
}

type k8sProbe struct {
	HTTPGet *struct {
		Path string `json:"path"`
		Port any    `json:"port"`
	} `json:"httpGet"`
	PeriodSeconds    int `json:"periodSeconds"`
	FailureThreshold int `json:"failureThreshold"`
}

// k8sSelector holds spec.selector of any kind: a Service's is a plain map.
type k8sSelector struct {
	Spec struct {
		Selector map[string]any `json:"selector"`
	} `json:"spec"`
}

var k8sFiles = []string{
	"configs/kubernetes/configmap.yaml",
	"configs/kubernetes/deployment.yaml",
	"configs/kubernetes/service.yaml",
	"configs/kubernetes/podmonitor.yaml",
	"configs/kubernetes/poddisruptionbudget.yaml",
	"configs/kubernetes/cloud-lb/service.yaml",
}

// loadK8s returns every object of the manifests by "Kind/name", and Services' selectors.
func loadK8s(t *testing.T) (map[string]k8sObject, map[string]map[string]string) {
	t.Helper()
	objs := map[string]k8sObject{}
	selectors := map[string]map[string]string{}
	all := loadYAML(t, k8sFiles...)
	for _, f := range k8sFiles {
		var docs []k8sObject
		decodeYAML(t, all, f, &docs)
		var sels []k8sSelector
		decodeYAML(t, all, f, &sels)
		for i, o := range docs {
			if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
				t.Fatalf("%s: document %d lacks apiVersion, kind or metadata.name", f, i)
			}
			key := o.Kind + "/" + o.Metadata.Name
			if _, dup := objs[key]; dup {
				t.Fatalf("%s: %s defined twice", f, key)
			}
			objs[key] = o
			if o.Kind == "Service" {
				m := map[string]string{}
				for k, v := range sels[i].Spec.Selector {
					m[k] = fmt.Sprint(v)
				}
				selectors[o.Metadata.Name] = m
			}
		}
	}
	return objs, selectors
}

// selects reports whether a label selector matches a set of labels.
func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func TestKubernetesManifests(t *testing.T) {
	objs, svcSelectors := loadK8s(t)
	get := func(key string) k8sObject {
		t.Helper()
		o, ok := objs[key]
		if !ok {
			t.Fatalf("no %s in %v", key, k8sFiles)
		}
		return o
	}
	cm := get("ConfigMap/tnsguard")
	dep := get("Deployment/tnsguard")
	svc := get("Service/tnsguard")
	lb := get("Service/tnsguard-lb")
	pm := get("PodMonitor/tnsguard")
	pdb := get("PodDisruptionBudget/tnsguard")

	text, ok := cm.Data["tnsguard.toml"]
	if !ok {
		t.Fatal("ConfigMap tnsguard has no tnsguard.toml")
	}
	cfg := parseTnsguardConfig(t, "ConfigMap tnsguard.toml", text)

	if dep.Spec.Replicas == nil || *dep.Spec.Replicas < 2 {
		t.Errorf("Deployment replicas %v, want several", dep.Spec.Replicas)
	}
	if r := dep.Spec.Replicas; r != nil && *r != 3 {
		t.Errorf("Deployment replicas %d, want 3", *r)
	}
	podLabels := dep.Spec.Template.Metadata.Labels
	if !selects(dep.Spec.Selector.MatchLabels, podLabels) {
		t.Errorf("Deployment selector %v does not match its pods %v", dep.Spec.Selector.MatchLabels, podLabels)
	}
	for name, sel := range map[string]map[string]string{
		"Service tnsguard": svcSelectors["tnsguard"], "Service tnsguard-lb": svcSelectors["tnsguard-lb"],
		"PodMonitor": pm.Spec.Selector.MatchLabels, "PodDisruptionBudget": pdb.Spec.Selector.MatchLabels,
	} {
		if !selects(sel, podLabels) {
			t.Errorf("%s selector %v does not select the pods %v", name, sel, podLabels)
		}
	}

	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if !slices.Equal(c.Args, []string{"run", "-config", "/etc/tnsguard/tnsguard.toml"}) {
		t.Errorf("container args %q", c.Args)
	}
	// The config file comes from the ConfigMap.
	mounted := false
	for _, m := range c.VolumeMounts {
		for _, v := range pod.Volumes {
			if v.Name == m.Name && v.ConfigMap != nil && v.ConfigMap.Name == cm.Metadata.Name && m.MountPath == "/etc/tnsguard" {
				mounted = true
			}
		}
	}
	if !mounted {
		t.Error("ConfigMap tnsguard is not mounted at /etc/tnsguard")
	}

	// Container ports are exactly the config's listeners and admin port, on all addresses.
	portByName := map[string]int{}
	var containerPorts []int
	for _, p := range c.Ports {
		portByName[p.Name] = p.ContainerPort
		containerPorts = append(containerPorts, p.ContainerPort)
	}
	resolve := func(what string, p any) int {
		t.Helper()
		switch v := p.(type) {
		case string:
			n, ok := portByName[v]
			if !ok {
				t.Fatalf("%s: port %q is not a container port name (%v)", what, v, portByName)
			}
			return n
		case float64:
			return int(v)
		}
		t.Fatalf("%s: port %v", what, p)
		return 0
	}
	adminPort := port(t, cfg.Admin.Listen)
	wantPorts := []int{adminPort}
	listenerByPort := map[int]int{}
	if h := host(t, cfg.Admin.Listen); h != "0.0.0.0" && h != "" {
		t.Errorf("admin.listen %q: kubelet probes and Prometheus reach the pod IP", cfg.Admin.Listen)
	}
	for i, l := range cfg.Listeners {
		if h := host(t, l.Listen); h != "0.0.0.0" && h != "" {
			t.Errorf("listener %q listens on %q: Services reach the pod IP", l.Name, l.Listen)
		}
		wantPorts = append(wantPorts, port(t, l.Listen))
		listenerByPort[port(t, l.Listen)] = i
	}
	slices.Sort(wantPorts)
	slices.Sort(containerPorts)
	if !slices.Equal(wantPorts, containerPorts) {
		t.Errorf("container ports %v, the ConfigMap listens on %v", containerPorts, wantPorts)
	}

	for _, pr := range []struct {
		name  string
		probe *k8sProbe
		path  string
	}{{"livenessProbe", c.LivenessProbe, "/healthz"}, {"readinessProbe", c.ReadinessProbe, "/readyz"}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("no %s httpGet", pr.name)
			continue
		}
		if pr.probe.HTTPGet.Path != pr.path {
			t.Errorf("%s path %q, want %s", pr.name, pr.probe.HTTPGet.Path, pr.path)
		}
		if p := resolve(pr.name, pr.probe.HTTPGet.Port); p != adminPort {
			t.Errorf("%s on port %d, admin listens on %d", pr.name, p, adminPort)
		}
	}

	// Stop order: preStop sleep (endpoints go), then SIGTERM: grace + drain, all
	// within terminationGracePeriodSeconds, or the kubelet kills live sessions.
	var preStop time.Duration
	switch ps := c.Lifecycle.PreStop; {
	case ps.Sleep != nil:
		preStop = time.Duration(ps.Sleep.Seconds) * time.Second
	case ps.Exec != nil && len(ps.Exec.Command) == 2 && ps.Exec.Command[0] == "sleep":
		n, _ := time.ParseDuration(ps.Exec.Command[1] + "s")
		preStop = n
	}
	if preStop < 5*time.Second {
		t.Errorf("preStop waits %v: endpoints need a few seconds to drop the pod before tnsguard drains", preStop)
	}
	if pod.TerminationGracePeriodSeconds == nil {
		t.Fatal("no terminationGracePeriodSeconds")
	}
	grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	if need := preStop + cfg.stopBudget(t); grace <= need {
		t.Errorf("terminationGracePeriodSeconds %v is not above preStop %v + shutdown grace + drain_timeout (%v together)", grace, preStop, need)
	}

	for _, r := range []string{"cpu", "memory"} {
		if c.Resources.Requests[r] == "" {
			t.Errorf("no resources.requests.%s", r)
		}
	}
	if c.Resources.Limits["memory"] == "" {
		t.Error("no resources.limits.memory")
	}
	// The memory limit must hold every session the config lets in: past it
	// the OOM killer ends the pod and every session in it, where
	// max_sessions turns the extra apps away (TnsguardAppsRejected).
	// Measured in a memory cgroup on 2026-11-30: at 256 MiB, 6,500 sessions
	// moving bulk at once survived and 8,000 were killed; the cgroup is
	// charged about 33 KB a busy session (Go's heap and stacks, and the
	// kernel memory of its two sockets) on top of about 20 MB.
	limit := quantityBytes(t, c.Resources.Limits["memory"])
	var sessions int64
	for _, l := range cfg.Listeners {
		if l.MaxSessions == 0 {
			t.Errorf("listener %s: no max_sessions under a memory limit of %s: a burst of apps gets the pod OOM-killed", l.Name, c.Resources.Limits["memory"])
		}
		sessions += int64(l.MaxSessions)
	}
	if need := 20<<20 + sessions*36<<10; need > limit {
		t.Errorf("max_sessions of all listeners, %d, need about %d MiB busy; the memory limit is %s", sessions, need>>20, c.Resources.Limits["memory"])
	}
	nonRoot := (pod.SecurityContext.RunAsNonRoot != nil && *pod.SecurityContext.RunAsNonRoot) ||
		(c.SecurityContext.RunAsNonRoot != nil && *c.SecurityContext.RunAsNonRoot)
	if !nonRoot {
		t.Error("runAsNonRoot is not set")
	}
	if u := pod.SecurityContext.RunAsUser; u != nil && *u == 0 {
		t.Error("runAsUser 0")
	}
	if v := c.SecurityContext.ReadOnlyRootFilesystem; v == nil || !*v {
		t.Error("readOnlyRootFilesystem is not true")
	}
	if v := c.SecurityContext.AllowPrivilegeEscalation; v == nil || *v {
		t.Error("allowPrivilegeEscalation is not false")
	}
	if !slices.Contains(c.SecurityContext.Capabilities.Drop, "ALL") {
		t.Error("capabilities do not drop ALL")
	}

	// Apps in the cluster: Service port -> a listener without PROXY protocol.
	checkService := func(name string, s k8sObject, proxy string) {
		t.Helper()
		if len(s.Spec.Ports) == 0 {
			t.Errorf("Service %s has no ports", name)
			return
		}
		for _, p := range s.Spec.Ports {
			target := resolve("Service "+name, p.TargetPort)
			i, ok := listenerByPort[target]
			if !ok {
				t.Errorf("Service %s port %d -> %d: no listener there", name, p.Port, target)
				continue
			}
			l := cfg.Listeners[i]
			pp := l.ProxyProtocol
			if pp == "" {
				pp = "off"
			}
			if pp != proxy {
				t.Errorf("Service %s -> listener %q with proxy_protocol %q, want %q", name, l.Name, pp, proxy)
			}
			if proxy == "required" && len(l.TrustedProxies) == 0 {
				t.Errorf("listener %q requires PROXY headers but trusts no proxy", l.Name)
			}
		}
	}
	checkService("tnsguard", svc, "off")
	if p := svc.Spec.Ports; len(p) > 0 && p[0].Port != 1522 {
		t.Errorf("Service tnsguard port %d, want 1522", p[0].Port)
	}
	// Apps outside: a cloud LB that sends PROXY v2 -> the listener that requires it.
	if lb.Spec.Type != "LoadBalancer" {
		t.Errorf("Service tnsguard-lb type %q, want LoadBalancer", lb.Spec.Type)
	}
	if lb.Metadata.Annotations["service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"] != "*" {
		t.Error("Service tnsguard-lb does not ask the load balancer for PROXY protocol")
	}
	checkService("tnsguard-lb", lb, "required")

	if len(pm.Spec.PodMetricsEndpoints) != 1 {
		t.Fatalf("PodMonitor has %d endpoints, want 1", len(pm.Spec.PodMetricsEndpoints))
	}
	ep := pm.Spec.PodMetricsEndpoints[0]
	if resolve("PodMonitor", ep.Port) != adminPort || ep.Path != "/metrics" {
		t.Errorf("PodMonitor scrapes port %q path %q, want the admin port and /metrics", ep.Port, ep.Path)
	}
	if !strings.HasPrefix(pm.APIVersion, "monitoring.coreos.com/") {
		t.Errorf("PodMonitor apiVersion %q", pm.APIVersion)
	}
	// The Operator names the job after the pod label jobLabel names, else
	// "<namespace>/<PodMonitor>": TnsguardDown's matcher must be that name.
	rules, err := os.ReadFile(filepath.Join(repoRoot(t), "configs/prometheus/tnsguard.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`up\{job="([^"]+)"\}`).FindSubmatch(rules)
	if m == nil {
		t.Fatal(`no up{job="..."} in the alert rules`)
	}
	if job := dep.Spec.Template.Metadata.Labels[pm.Spec.JobLabel]; pm.Spec.JobLabel == "" || job != string(m[1]) {
		t.Errorf("the PodMonitor's scrape job is %q (jobLabel %q), but TnsguardDown matches job %q: it could never fire",
			job, pm.Spec.JobLabel, m[1])
	}
}

// composeFile is the part of docker-compose.yml these tests read.
type composeFile struct {
	Services map[string]struct {
		Build struct {
			Context    string `json:"context"`
			Dockerfile string `json:"dockerfile"`
		} `json:"build"`
		Restart         string   `json:"restart"`
		Command         []string `json:"command"`
		Volumes         []string `json:"volumes"`
		Ports           []string `json:"ports"`
		StopGracePeriod string   `json:"stop_grace_period"`
	} `json:"services"`
}

func TestDockerCompose(t *testing.T) {
	var docs []composeFile
	decodeYAML(t, loadYAML(t, "configs/docker-compose.yml"), "configs/docker-compose.yml", &docs)
	if len(docs) != 1 {
		t.Fatalf("%d YAML documents, want 1", len(docs))
	}
	s, ok := docs[0].Services["tnsguard"]
	if !ok {
		t.Fatal("no service tnsguard")
	}
	if s.Restart != "unless-stopped" {
		t.Errorf("restart: %q, want unless-stopped", s.Restart)
	}
	if s.Build.Context != ".." || (s.Build.Dockerfile != "" && s.Build.Dockerfile != "Dockerfile") {
		t.Errorf("build %+v: want the repository's Dockerfile (context ..)", s.Build)
	}
	var cfgFile string
	for _, v := range s.Volumes {
		f := strings.Split(v, ":")
		switch {
		case len(f) < 2:
		case f[1] == "/etc/tnsguard/tnsguard.toml":
			cfgFile = strings.TrimPrefix(f[0], "./")
		case f[1] == "/etc/tnsguard":
			cfgFile = strings.TrimPrefix(f[0], "./") + "/tnsguard.toml"
		}
	}
	if cfgFile == "" {
		t.Fatalf("volumes %v mount nothing at /etc/tnsguard/tnsguard.toml", s.Volumes)
	}
	cfg := parseTnsguardConfig(t, cfgFile, readRepoFile(t, "configs/"+cfgFile))
	published := strings.Join(s.Ports, " ")
	for _, l := range cfg.Listeners {
		if p := fmt.Sprint(port(t, l.Listen)); !strings.Contains(published, ":"+p) {
			t.Errorf("listener %q port %s is not published (%v)", l.Name, p, s.Ports)
		}
	}
	if s.StopGracePeriod == "" {
		t.Fatal("no stop_grace_period: Docker's default 10s cuts the drain short")
	}
	d, err := time.ParseDuration(s.StopGracePeriod)
	if err != nil {
		t.Fatalf("stop_grace_period %q: %v", s.StopGracePeriod, err)
	}
	if budget := cfg.stopBudget(t); d <= budget {
		t.Errorf("stop_grace_period %v is not above shutdown grace + drain_timeout %v", d, budget)
	}
}

// quantityBytes reads a Kubernetes memory quantity such as 256Mi or 1G.
func quantityBytes(t *testing.T, q string) int64 {
	t.Helper()
	units := []struct {
		suffix string
		mult   int64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"k", 1e3}, {"M", 1e6}, {"G", 1e9}, {"", 1}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(q, u.suffix); ok {
			var n int64
			if _, err := fmt.Sscan(num, &n); err == nil {
				return n * u.mult
			}
		}
	}
	t.Fatalf("memory quantity %q not understood", q)
	return 0
}

// TestDockerConfigMountSeesEdits: the config is reloaded in place (docker kill -s HUP),
// so the mount must show the host's edits. A bind mount of a single file holds on to
// the file (its inode): an edit that writes a new file and renames it over the old one
// (vim, sed -i, Ansible, git checkout) never reaches the container, and the HUP that
// follows reloads the old text and logs "configuration reloaded". A directory mount
// sees the new file, as the Kubernetes Deployment's does (no subPath).
func TestDockerConfigMountSeesEdits(t *testing.T) {
	var docs []composeFile
	decodeYAML(t, loadYAML(t, "configs/docker-compose.yml"), "configs/docker-compose.yml", &docs)
	for _, v := range docs[0].Services["tnsguard"].Volumes {
		if f := strings.Split(v, ":"); len(f) >= 2 && f[1] == "/etc/tnsguard/tnsguard.toml" {
			t.Errorf("configs/docker-compose.yml mounts the single file %q: mount its directory at /etc/tnsguard", v)
		}
	}
	mount := regexp.MustCompile(`-v\s+(\S+):(/etc/tnsguard\S*)`)
	for _, rel := range []string{"README.md", "Dockerfile"} {
		for i, line := range strings.Split(readRepoFile(t, rel), "\n") {
			for _, m := range mount.FindAllStringSubmatch(line, -1) {
				if target := strings.TrimSuffix(m[2], ":ro"); target != "/etc/tnsguard" {
					t.Errorf("%s:%d: %s mounts %s: mount a directory at /etc/tnsguard, or a reload misses edits", rel, i+1, m[0], target)
				}
			}
		}
	}
}
