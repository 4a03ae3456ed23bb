package daemon

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"image/png"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/internal/config"
	"github.com/scopewatch/scopewatch/internal/testutil"
)

// TestFeedbackThroughBroker runs serve against a real mosquitto: uncertain
// crops become feedback samples on the broker, a label published for one
// is stored, and once the drift monitor is in alarm for a window with
// enough labels a retune request is published.
func TestFeedbackThroughBroker(t *testing.T) {
	b := testutil.StartMosquitto(t)
	sub := newSubscriber(t, b.URL(), "fb-sub", "scopewatch/v1/lab/scope1/#", "scopewatch/v1/lab/retune/request")
	model := &baselineModel{version: "pix-1", baseline: filepath.Join(requireDefaultModel(t), "baseline.json")}
	td := startTestDaemonWith(t, t.TempDir(), model, func(c *config.Config) {
		smallDrift(c)
		c.Site, c.Device = "lab", "scope1"
		c.MQTT.Broker = b.URL()
		c.Images.Kind = "crop"
		c.Feedback.Enabled = true
		c.Feedback.WindowCells = 10
		c.Feedback.MaxPerWindow = 10
		c.Feedback.Retune = config.Retune{Enabled: true, K: 1, M: 2, MinLabelled: 1, Cooldown: time.Hour}
	})
	testutil.Eventually(t, 30*time.Second, func() bool { return getDrift(t, td.url).Active }, "drift detection running")
	send := func(name string, w int, red uint8) {
		resp := upload(t, fmt.Sprintf("%s/v1/images?slide=fb-slide&name=%s.png", td.url, name), "image/png", pngBytes(t, w, 40, red))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("upload %s: %d", name, resp.StatusCode)
		}
	}
	// p = 128/255, next to the 0.5 threshold: every crop is uncertain.
	for i := 0; i < 4; i++ {
		send(fmt.Sprintf("u%d", i), 40+i, 128)
	}
	// A crop whose file carries a patient's name in a PNG text chunk.
	resp := upload(t, td.url+"/v1/images?slide=fb-slide&name=named.png", "image/png", withPNGText(t, pngBytes(t, 60, 40, 128), "Patient", "Jane Doe"))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("upload named.png: %d", resp.StatusCode)
	}
	fbTopic := "scopewatch/v1/lab/scope1/feedback"
	samples := func() []wire.Sample {
		var out []wire.Sample
		for _, m := range sub.messages(fbTopic) {
			if s, err := wire.DecodeSample(m); err == nil {
				out = append(out, s)
			}
		}
		return out
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return len(samples()) == 5 }, "5 feedback samples on the broker")
	for _, s := range samples() {
		if s.Crop.Format != "png" || len(s.Crop.Data) == 0 || bytes.Contains(s.Crop.Data, []byte("Jane")) {
			t.Fatalf("sample crop: format %q, %d bytes, carries the metadata: %v", s.Crop.Format, len(s.Crop.Data), bytes.Contains(s.Crop.Data, []byte("Jane")))
		}
		if _, err := png.Decode(bytes.NewReader(s.Crop.Data)); err != nil {
			t.Fatalf("sample crop does not decode: %v", err)
		}
	}
	s := samples()[0]
	if s.Reason != wire.ReasonUncertainty || s.ModelVersion != "pix-1" || s.Device != "scope1" || s.Site != "lab" ||
		s.SlideHash == "" || strings.Contains(string(sub.messages(fbTopic)[0]), "fb-slide") {
		t.Fatalf("sample %+v", s)
	}

	// A label for it comes back on the label topic and is stored.
	lb, _ := json.Marshal(wire.Label{Schema: wire.LabelSchema, FeedbackID: s.ID, Label: wire.LabelParasitized, Who: "tester", Time: time.Now().UTC()})
	if tok := sub.client.Publish("scopewatch/v1/lab/scope1/label", 1, false, lb); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish label: %v", tok.Error())
	}
	// And a malformed one is rejected and counted.
	sub.client.Publish("scopewatch/v1/lab/scope1/label", 1, false, []byte(`{"schema":"scopewatch.label/v1","feedback_id":"nope"}`)).WaitTimeout(5 * time.Second)
	db := openDB(t, td.cfg.Database)
	testutil.Eventually(t, 10*time.Second, func() bool {
		var n int
		db.QueryRow(`SELECT COUNT(*) FROM feedback_labels WHERE feedback_id = ?`, s.ID).Scan(&n)
		return n == 1
	}, "label stored")
	testutil.Eventually(t, 10*time.Second, func() bool { return strings.Contains(metricsText(t, td.url), "scopewatch_labels_rejected_total{") },
		"malformed label counted")

	// Drifted crops (p = 250/255): the monitor alarms, the next window
	// ends in alarm, and with one labelled sample a retune request goes out.
	for i := 0; i < 40; i++ {
		send(fmt.Sprintf("d%d", i), 40+i, 250)
	}
	retuneTopic := "scopewatch/v1/lab/retune/request"
	testutil.Eventually(t, 20*time.Second, func() bool { return len(sub.messages(retuneTopic)) > 0 }, "retune request on the broker")
	var req wire.RetuneRequest
	if err := json.Unmarshal(sub.messages(retuneTopic)[0], &req); err != nil {
		t.Fatal(err)
	}
	if req.Schema != wire.RetuneSchema || req.ModelVersion != "pix-1" || req.Device != "scope1" || len(req.FeedbackIDs) != 1 ||
		req.FeedbackIDs[0] != s.ID || req.Evidence["cells_since_reset"] == 0 {
		t.Fatalf("retune request %+v", req)
	}
	// Cooldown: the following alarmed windows ask nothing more.
	for i := 40; i < 60; i++ {
		send(fmt.Sprintf("d%d", i), 40+i, 250)
	}
	time.Sleep(500 * time.Millisecond)
	if n := len(sub.messages(retuneTopic)); n != 1 {
		t.Fatalf("%d retune requests within the cooldown", n)
	}
	m := metricsText(t, td.url)
	for _, want := range []string{"scopewatch_retune_requests_total 1", "scopewatch_feedback_labelled 1", "scopewatch_feedback_label_agreement 1"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// withPNGText inserts a tEXt chunk after the PNG's header chunk.
func withPNGText(t *testing.T, p []byte, key, value string) []byte {
	t.Helper()
	const sigAndIHDR = 8 + 4 + 4 + 13 + 4
	if len(p) < sigAndIHDR || string(p[12:16]) != "IHDR" {
		t.Fatal("not a PNG")
	}
	data := append([]byte(key+"\x00"), value...)
	chunk := binary.BigEndian.AppendUint32(nil, uint32(len(data)))
	chunk = append(chunk, "tEXt"...)
	chunk = append(chunk, data...)
	chunk = binary.BigEndian.AppendUint32(chunk, crc32.ChecksumIEEE(append([]byte("tEXt"), data...)))
	out := append(append(append([]byte(nil), p[:sigAndIHDR]...), chunk...), p[sigAndIHDR:]...)
	if !bytes.Contains(out, []byte(value)) {
		t.Fatal("text chunk not inserted")
	}
	return out
}
