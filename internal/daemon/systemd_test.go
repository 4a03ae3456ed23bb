package daemon

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildOut  []byte
)

// scopewatchBinary builds the real binary once per test run.
func scopewatchBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "scopewatch-e2e-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "scopewatch")
		cmd := exec.Command("go", "build", "-o", binPath, "../../cmd/scopewatch")
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build: %v\n%s", buildErr, buildOut)
	}
	return binPath
}

// unitForTest rewrites the installed paths of a unit (scopewatch.service
// when name is empty) to the test binary, so that verify can check the
// commands exist.
func unitForTest(t *testing.T, name ...string) string {
	t.Helper()
	unitName := "scopewatch.service"
	if len(name) > 0 {
		unitName = name[0]
	}
	src, err := os.ReadFile(filepath.Join("..", "..", "systemd", unitName))
	if err != nil {
		t.Fatal(err)
	}
	bin := scopewatchBinary(t)
	unit := strings.ReplaceAll(string(src), "/usr/bin/scopewatch", bin)
	dir := t.TempDir()
	p := filepath.Join(dir, unitName)
	if err := os.WriteFile(p, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSystemdUnitVerifies(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze not installed")
	}
	for _, name := range []string{"scopewatch.service", "scopewatch-tune.service"} {
		p := unitForTest(t, name)
		out, err := exec.Command("systemd-analyze", "verify", p).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Fatalf("systemd-analyze verify %s: %v\n%s", name, err, out)
		}
	}
}

func TestSystemdUnitSecurityRating(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze not installed")
	}
	for _, name := range []string{"scopewatch.service", "scopewatch-tune.service"} {
		p := unitForTest(t, name)
		out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--no-pager", p).CombinedOutput()
		if err != nil {
			t.Fatalf("systemd-analyze security %s: %v\n%s", name, err, out)
		}
		m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+) (\w+)`).FindStringSubmatch(string(out))
		if m == nil {
			t.Fatalf("%s: no overall rating in:\n%s", name, out)
		}
		exposure, _ := strconv.ParseFloat(m[1], 64)
		if m[2] != "OK" && m[2] != "SAFE" {
			t.Fatalf("%s: exposure %.1f %s, want OK or SAFE:\n%s", name, exposure, m[2], out)
		}
		t.Logf("systemd-analyze security %s: %.1f %s", name, exposure, m[2])
	}
}

func TestSystemdSnippetsAndExampleConfig(t *testing.T) {
	bin := scopewatchBinary(t)
	out, err := exec.Command(bin, "config", "check", "--no-load", filepath.Join("..", "..", "systemd", "scopewatch.yaml")).CombinedOutput()
	if err != nil {
		t.Fatalf("example config refused: %v\n%s", err, out)
	}
	unit, _ := os.ReadFile(filepath.Join("..", "..", "systemd", "scopewatch.service"))
	for _, want := range []string{"Type=notify", "WatchdogSec=", "StateDirectory=scopewatch", "ConfigurationDirectory=scopewatch", "User=scopewatch", "NoNewPrivileges=yes", "ProtectSystem=strict"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %s", want)
		}
	}
	su, _ := os.ReadFile(filepath.Join("..", "..", "systemd", "scopewatch.sysusers.conf"))
	if !regexp.MustCompile(`(?m)^u scopewatch `).Match(su) {
		t.Errorf("sysusers snippet does not create the scopewatch user")
	}
	tf, _ := os.ReadFile(filepath.Join("..", "..", "systemd", "scopewatch.tmpfiles.conf"))
	if !regexp.MustCompile(`(?m)^d /var/lib/scopewatch/inbox +2770 scopewatch scopewatch`).Match(tf) {
		t.Errorf("tmpfiles snippet does not create the group-writable inbox")
	}
}
