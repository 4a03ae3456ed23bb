package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func noEnv(string) (string, bool) { return "", false }

func resolvedDefault() Config {
	c := Default()
	c.resolvePaths()
	return c
}

func TestDefaultYAMLDecodesToDefault(t *testing.T) {
	c, err := Decode(strings.NewReader(string(DefaultYAML())), noEnv)
	if err != nil {
		t.Fatalf("default YAML: %v", err)
	}
	if want := resolvedDefault(); !reflect.DeepEqual(c, want) {
		t.Fatalf("default YAML differs from Default() in %v", Diff(c, want))
	}
}

func TestDefaultYAMLMentionsEveryField(t *testing.T) {
	var keys []string
	var walk func(reflect.Type)
	walk = func(t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			keys = append(keys, tagName(f))
			if f.Type.Kind() == reflect.Struct && f.Type != durationType {
				walk(f.Type)
			}
		}
	}
	walk(reflect.TypeOf(Config{}))
	y := string(DefaultYAML())
	for _, k := range keys {
		if !strings.Contains(y, k+":") {
			t.Errorf("default YAML lacks key %q", k)
		}
	}
}

func TestEmptyFileIsDefault(t *testing.T) {
	for _, in := range []string{"", "\n", "# only a comment\n", "~\n", "---\n"} {
		c, err := Decode(strings.NewReader(in), noEnv)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if !reflect.DeepEqual(c, resolvedDefault()) {
			t.Fatalf("%q: differs in %v", in, Diff(c, resolvedDefault()))
		}
	}
}

func TestPartialFileKeepsOtherDefaults(t *testing.T) {
	c, err := Decode(strings.NewReader("inbox:\n  rescan_interval: 5s\nslides:\n  target_cells: 1000\nstate_dir: /tmp/sw\n"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if c.Inbox.RescanInterval != 5*time.Second || c.Slides.TargetCells != 1000 {
		t.Fatalf("values not applied: %+v %+v", c.Inbox, c.Slides)
	}
	if c.Inbox.StableFor != 2*time.Second || c.Slides.Marker != ".done" {
		t.Fatalf("defaults lost: %+v", c.Inbox)
	}
	if c.Database != "/tmp/sw/scopewatch.db" || c.Inbox.Dir != "/tmp/sw/inbox" || c.Inbox.QuarantineDir != "/tmp/sw/quarantine" {
		t.Fatalf("paths not derived from state_dir: %q %q %q", c.Database, c.Inbox.Dir, c.Inbox.QuarantineDir)
	}
}

func TestBadConfigNamesField(t *testing.T) {
	cases := []struct {
		name, in string
		path     string // must appear in the error
		accepted string // must appear in the error
	}{
		{"unknown top key", "sight: lab\n", "sight", "site"},
		{"unknown nested key", "inbox:\n  rescan: 5s\n", "inbox.rescan", "rescan_interval"},
		{"unknown deep key", "mqtt:\n  tls:\n    ca: x\n", "mqtt.tls.ca", "ca_file"},
		{"bad enum", "inbox:\n  after_process: archive\n", "inbox.after_process", "move, delete"},
		{"bad level", "log:\n  level: verbose\n", "log.level", "debug, info, warn, error"},
		{"bad duration", "inbox:\n  rescan_interval: soon\n", "inbox.rescan_interval", ""},
		{"negative duration", "inbox:\n  rescan_interval: -1s\n", "inbox.rescan_interval", "Go duration"},
		{"bad int", "model:\n  threads: many\n", "model.threads", ""},
		{"out of range", "model:\n  threads: 0\n", "model.threads", "1..64"},
		{"bad site", "site: Lab/1\n", "site", "a-z 0-9"},
		{"bad scheme", "mqtt:\n  broker: http://x:1\n", "mqtt.broker", "tcp"},
		{"no scheme", "mqtt:\n  broker: localhost:1883\n", "mqtt.broker", "scheme://"},
		{"bad ci", "slides:\n  ci: normal\n", "slides.ci", "wilson, clopper-pearson"},
		{"scalar for section", "inbox: yes\n", "inbox", "rescan_interval"},
		{"duplicate key", "site: a\nsite: b\n", "site", ""},
		{"bad extension", "inbox:\n  extensions: [png]\n", "inbox.extensions[0]", ".png"},
		{"camera without source", "camera:\n  enabled: true\n", "camera.source", "/dev/video0"},
		{"password without user", "mqtt:\n  password: x\n", "mqtt.username", ""},
		{"two documents", "site: a\n---\nsite: b\n", "more than one YAML document", ""},
		{"drift ert too small", "drift:\n  ert: 50\n", "drift.ert", "100..100000000"},
		{"drift warn above alarm", "drift:\n  ert: 1000\n  warn_ert: 2000\n", "drift.warn_ert", "1..drift.ert"},
		{"drift windows unsorted", "drift:\n  windows: [200, 50]\n", "drift.windows[1]", "ascending"},
		{"drift window too small", "drift:\n  windows: [5]\n", "drift.windows[0]", "10..100000"},
		{"drift embedding on fields", "drift:\n  embedding: true\n", "drift.embedding", "images.kind crop"},
		{"drift unknown key", "drift:\n  ertt: 5\n", "drift.ertt", "persist_interval"},
		{"feedback without mqtt", "mqtt:\n  enabled: false\nfeedback:\n  enabled: true\n", "feedback.enabled", "mqtt.enabled"},
		{"feedback band", "feedback:\n  enabled: true\n  band: 0.7\n", "feedback.band", "(0, 0.5]"},
		{"feedback retune k above m", "feedback:\n  enabled: true\n  retune:\n    k: 6\n    m: 5\n", "feedback.retune.k", "k <= m"},
		{"feedback window", "feedback:\n  enabled: true\n  window_cells: 5\n", "feedback.window_cells", "10..1000000"},
		{"drift persist too often", "drift:\n  persist_interval: 10ms\n", "drift.persist_interval", "at least 1s"},
		{"go memory limit too small", "memory:\n  go_limit: 1048576\n", "memory.go_limit", "8 MiB"},
		{"http open to the network without token", "http:\n  listen: 0.0.0.0:8470\n", "http.token", "loopback"},
		{"http any interface without token", "http:\n  listen: :8470\n", "http.token", "SCOPEWATCH_HTTP_TOKEN"},
		{"http short token", "http:\n  token: abc\n", "http.token", "at least 16"},
		{"topic root too deep", "mqtt:\n  topic_root: a/b/c/d\n", "mqtt.topic_root", "one to three"},
		{"topic root wildcard", "mqtt:\n  topic_root: scopewatch/+\n", "mqtt.topic_root", "without wildcards"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(strings.NewReader(tc.in), noEnv)
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			if !strings.Contains(err.Error(), tc.path) || !strings.Contains(err.Error(), tc.accepted) {
				t.Fatalf("error %q does not name %q / %q", err, tc.path, tc.accepted)
			}
		})
	}
}

func TestDriftSettingsAccepted(t *testing.T) {
	c, err := Decode(strings.NewReader("images:\n  kind: crop\ndrift:\n  ert: 2000\n  warn_ert: 200\n  windows: [20, 50]\n  embedding: true\n  sims: 300\n"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if d := c.Drift; !d.Enabled || d.ERT != 2000 || d.WarnERT != 200 || len(d.Windows) != 2 || !d.Embedding || d.Sims != 300 || d.PersistInterval != time.Minute {
		t.Fatalf("drift section %+v", d)
	}
	// Disabled, the detector settings are not checked.
	if _, err := Decode(strings.NewReader("drift:\n  enabled: false\n  embedding: true\n"), noEnv); err != nil {
		t.Fatalf("disabled drift section refused: %v", err)
	}
}

func TestAllProblemsReportedAtOnce(t *testing.T) {
	_, err := Decode(strings.NewReader("log:\n  level: loud\n  format: xml\n"), noEnv)
	var es Errors
	if !errors.As(err, &es) || len(es) != 2 {
		t.Fatalf("want 2 field errors, got %v", err)
	}
}

func TestEnvOverridesSecrets(t *testing.T) {
	env := map[string]string{"SCOPEWATCH_MQTT_USERNAME": "dev", "SCOPEWATCH_MQTT_PASSWORD": "s3cret"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	c, err := Decode(strings.NewReader("mqtt:\n  username: file\n  password: old\n"), lookup)
	if err != nil {
		t.Fatal(err)
	}
	if c.MQTT.Username != "dev" || c.MQTT.Password != "s3cret" {
		t.Fatalf("env not applied: %q %q", c.MQTT.Username, c.MQTT.Password)
	}
	if r := c.Redacted(); r.MQTT.Password == "s3cret" {
		t.Fatal("Redacted leaks the password")
	}
}

func TestLoadNamesFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sw.yaml")
	if err := os.WriteFile(p, []byte("bogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p, noEnv)
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("error should name the file and field: %v", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml"), noEnv); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestExampleConfigIsValid(t *testing.T) {
	p := filepath.Join("..", "..", "systemd", "scopewatch.yaml")
	if _, err := os.Stat(p); err != nil {
		t.Skip("systemd/scopewatch.yaml not present")
	}
	if _, err := Load(p, noEnv); err != nil {
		t.Fatal(err)
	}
}

func TestDiff(t *testing.T) {
	a, b := Default(), Default()
	b.Log.Level = "debug"
	b.Inbox.Extensions = []string{".png"}
	got := Diff(a, b)
	if want := []string{"inbox.extensions", "log.level"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Diff = %v, want %v", got, want)
	}
	for _, p := range Reloadable {
		found := false
		for _, d := range allPaths() {
			if d == p {
				found = true
			}
		}
		if !found {
			t.Errorf("Reloadable names unknown field %q", p)
		}
	}
}

func allPaths() []string {
	var out []string
	var walk func(reflect.Type, string)
	walk = func(t reflect.Type, prefix string) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			p := tagName(f)
			if prefix != "" {
				p = prefix + "." + p
			}
			if f.Type.Kind() == reflect.Struct && f.Type != durationType {
				walk(f.Type, p)
				continue
			}
			out = append(out, p)
		}
	}
	walk(reflect.TypeOf(Config{}), "")
	return out
}

func TestValidSlideID(t *testing.T) {
	for s, want := range map[string]bool{"S-001": true, "a.b_c": true, "": false, ".hidden": false, "a/b": false, "..": false, strings.Repeat("x", 129): false} {
		if got := ValidSlideID(s); got != want {
			t.Errorf("ValidSlideID(%q) = %v", s, got)
		}
	}
}

// FuzzDecode: arbitrary bytes never panic, and whatever is accepted is valid.
func FuzzDecode(f *testing.F) {
	f.Add(DefaultYAML())
	f.Add([]byte("inbox:\n  rescan_interval: 5s\n"))
	f.Add([]byte("a: &x {b: *x}\n"))
	f.Add([]byte("mqtt: {tls: {ca_file: [1,2]}}\n"))
	f.Add([]byte("site: a\n---\n"))
	f.Add([]byte("inbox: !!binary aGVsbG8=\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Decode(strings.NewReader(string(data)), noEnv)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error not wrapping ErrInvalid: %v", err)
			}
			return
		}
		if errs := c.Validate(); len(errs) != 0 {
			t.Fatalf("accepted config fails validation: %v", errs)
		}
	})
}

func TestWithReloadedTakesOnlyReloadableFields(t *testing.T) {
	a := Default()
	b := Default()
	b.Log.Level = "debug"
	b.Model.Threshold = 0.7
	b.Slides.TargetCells = 42
	b.Storage.Retention = 2 * time.Hour
	b.Device = "other-device"
	b.MQTT.Broker = "tcp://elsewhere:1883"
	got := a.WithReloaded(b)
	if d := Diff(got, b); !slices.Equal(d, []string{"device", "mqtt.broker"}) {
		t.Fatalf("fields still differing from next = %v, want only the restart-only ones [device mqtt.broker]", d)
	}
	for _, p := range Diff(a, got) {
		if !slices.Contains(Reloadable, p) {
			t.Errorf("WithReloaded changed %s, which is not reloadable", p)
		}
	}
}

func TestHTTPToken(t *testing.T) {
	for _, listen := range []string{"127.0.0.1:8470", "[::1]:8470", "localhost:0"} {
		if _, err := Decode(strings.NewReader("http:\n  listen: \""+listen+"\"\n"), noEnv); err != nil {
			t.Errorf("loopback %s without token refused: %v", listen, err)
		}
	}
	env := map[string]string{"SCOPEWATCH_HTTP_TOKEN": "0123456789abcdef0123"}
	c, err := Decode(strings.NewReader("http:\n  listen: 0.0.0.0:8470\n"), func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatalf("token from the environment not applied: %v", err)
	}
	if c.HTTP.Token != env["SCOPEWATCH_HTTP_TOKEN"] {
		t.Fatalf("token %q", c.HTTP.Token)
	}
	next := c
	next.HTTP.Token = "fedcba9876543210fedc"
	if got := c.WithReloaded(next); got.HTTP.Token != next.HTTP.Token {
		t.Error("http.token is not reloaded on SIGHUP")
	}
}
