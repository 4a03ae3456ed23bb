package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/internal/config"
	"github.com/scopewatch/scopewatch/internal/store/storetest"
	"github.com/scopewatch/scopewatch/internal/testutil"
)

// A device whose database is wiped and made again (a reinstall, a new
// card) must not publish an id it published before: receivers deduplicate
// by id, so a repeated one would silently drop a patient's result.
func TestIDsUniqueAcrossWipedDatabases(t *testing.T) {
	dir := t.TempDir()
	seen := map[string]int{}
	for round := 1; round <= 2; round++ {
		td := startTestDaemonWith(t, dir, &pixelAnalyzer{}, nil)
		for i := 0; i < 500; i++ {
			resp := upload(t, fmt.Sprintf("%s/v1/images?slide=s%d&name=a.png&complete=1", td.url, i), "image/png", pngBytes(t, 40, 40, 250))
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("round %d upload %d: %d", round, i, resp.StatusCode)
			}
		}
		td.d.alert(context.Background(), "test_alert", "an alert in round "+fmt.Sprint(round))
		rows, err := td.d.db.db.Query(`SELECT id FROM feedback_outbox WHERE kind IN ('result', 'alert')`)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rows.Next() {
			var id string
			rows.Scan(&id)
			if r, dup := seen[id]; dup {
				t.Fatalf("id %s published in round %d and again in round %d", id, r, round)
			}
			seen[id] = round
			n++
		}
		rows.Close()
		if n != 501 {
			t.Fatalf("round %d: %d results and alerts queued, want 501", round, n)
		}
		td.stop(t)
		storetest.Check(t, openDB(t, td.cfg.Database))
		storeFiles, _ := filepath.Glob(td.cfg.Database + "*")
		for _, f := range storeFiles {
			os.Remove(f)
		}
	}
	if len(seen) != 1002 {
		t.Fatalf("%d distinct ids over two databases, want 1002", len(seen))
	}
}

// A retried upload without a name is the same image: it is refused as a
// duplicate, not counted twice.
func TestUnnamedUploadDeduplicated(t *testing.T) {
	td := startTestDaemon(t, nil)
	img := pngBytes(t, 40, 40, 250)
	for i, want := range []int{http.StatusOK, http.StatusConflict} {
		resp := upload(t, td.url+"/v1/images?slide=u1", "image/png", img)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("upload %d: %d, want %d", i+1, resp.StatusCode, want)
		}
	}
	if _, cells, _, _ := slideState(t, td, "u1"); cells != 1 {
		t.Fatalf("slide counted %d cells after a retried upload, want 1", cells)
	}
}

// Two processes with the same site and device names on one broker: each
// sees the other's status and says so.
func TestDuplicateDeviceIdentityWarns(t *testing.T) {
	b := testutil.StartMosquitto(t)
	mutate := func(c *config.Config) {
		c.MQTT.Broker = b.URL()
		c.Site, c.Device = "lab", "twin"
	}
	one := startTestDaemon(t, mutate)
	two := startTestDaemon(t, mutate)
	degraded := func(td *testDaemon) bool {
		_, reasons := td.d.statusState()
		return strings.Contains(strings.Join(reasons, ","), "duplicate_identity")
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return degraded(one) || degraded(two) }, "no warning about the duplicate device identity")
	// The warning names the cause in words an operator can act on.
	for _, td := range []*testDaemon{one, two} {
		if !degraded(td) {
			continue
		}
		v, _ := td.d.degraded.Load("duplicate_identity")
		if !strings.Contains(v.(string), "own device name") {
			t.Fatalf("detail %q", v)
		}
	}
	// A single device on its own is not warned about.
	solo := startTestDaemon(t, func(c *config.Config) { c.MQTT.Broker = b.URL(); c.Site, c.Device = "lab", "solo" })
	time.Sleep(2 * time.Second)
	if degraded(solo) {
		t.Fatal("a device alone on the broker was warned about a duplicate")
	}
}

// A wrong broker password is visible within 5 s where operators look: the
// log names the cause, /readyz and the status report the link down.
func TestBrokerAuthFailureVisible(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "passwd")
	if out, err := exec.Command("/usr/bin/mosquitto_passwd", "-b", "-c", pw, "scope", "right").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd: %v %s", err, out)
	}
	os.Chmod(pw, 0o644)
	b := testutil.StartMosquitto(t, testutil.WithConfig("allow_anonymous false", "password_file "+pw))
	td := startTestDaemon(t, func(c *config.Config) {
		c.MQTT.Broker, c.MQTT.Username, c.MQTT.Password = b.URL(), "scope", "wrong"
	})
	var body map[string]any
	testutil.Eventually(t, 5*time.Second, func() bool {
		resp, err := http.Get(td.url + "/readyz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body = nil
		json.NewDecoder(resp.Body).Decode(&body)
		link, _ := body["mqtt_link"].(string)
		return body["mqtt_connected"] == false && strings.HasPrefix(link, "auth:")
	}, "/readyz does not show the refused credentials: %v", body)
	if state, reasons := td.d.statusState(); state != "degraded" || !strings.Contains(strings.Join(reasons, ","), "mqtt_link") {
		t.Fatalf("status %s %v", state, reasons)
	}
}
