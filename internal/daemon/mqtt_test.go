package daemon

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/scopewatch/scopewatch/internal/config"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
	"github.com/scopewatch/scopewatch/internal/testutil"
)

// subscriber is a real MQTT client with a persistent session that records
// every message per topic.
type subscriber struct {
	mu     sync.Mutex
	byTop  map[string][][]byte
	client mqtt.Client
}

func newSubscriber(t *testing.T, broker, id string, filters ...string) *subscriber {
	t.Helper()
	s := &subscriber{byTop: map[string][][]byte{}}
	handler := func(_ mqtt.Client, m mqtt.Message) {
		s.mu.Lock()
		s.byTop[m.Topic()] = append(s.byTop[m.Topic()], append([]byte(nil), m.Payload()...))
		s.mu.Unlock()
	}
	c, err := mqttconn.New(mqttconn.Config{Broker: broker, ClientID: id, MaxReconnectInterval: time.Second, ConnectRetryInterval: 200 * time.Millisecond},
		nil, mqttconn.Hooks{OnConnect: func(c mqtt.Client) {
			for _, f := range filters {
				c.Subscribe(f, 1, handler)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	s.client = c
	testutil.Eventually(t, 10*time.Second, c.IsConnectionOpen, "subscriber connected")
	time.Sleep(200 * time.Millisecond) // let the SUBACK land
	t.Cleanup(func() { c.Disconnect(100) })
	return s
}

func (s *subscriber) messages(topic string) [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.byTop[topic]...)
}

// resultIDs returns how many result messages arrived and how many distinct ids.
func (s *subscriber) resultIDs(t *testing.T, topic string) (total int, ids map[string]slideSummary) {
	ids = map[string]slideSummary{}
	for _, m := range s.messages(topic) {
		var r slideSummary
		if err := json.Unmarshal(m, &r); err != nil {
			t.Fatalf("bad result payload %q: %v", m, err)
		}
		if r.Schema != resultSchema || r.ID == "" {
			t.Fatalf("result without schema or id: %s", m)
		}
		ids[r.ID] = r
		total++
	}
	return total, ids
}

func TestMQTTResultsSurviveBrokerOutage(t *testing.T) {
	b := testutil.StartMosquitto(t)
	sub := newSubscriber(t, b.URL(), "test-sub", "scopewatch/v1/lab/scope1/#")
	td := startTestDaemon(t, func(c *config.Config) {
		c.MQTT.Enabled = true
		c.MQTT.Broker = b.URL()
		c.MQTT.MaxBackoff = time.Second
		c.Site, c.Device = "lab", "scope1"
	})
	statusTopic := "scopewatch/v1/lab/scope1/status"
	resultTopic := "scopewatch/v1/lab/scope1/result"
	testutil.Eventually(t, 10*time.Second, func() bool { return len(sub.messages(statusTopic)) > 0 }, "status published")
	var st statusPayload
	json.Unmarshal(sub.messages(statusTopic)[0], &st)
	if st.State != "online" || st.ModelVersion != "test-1" || st.Boot != td.d.boot {
		t.Fatalf("status %+v", st)
	}
	slide := func(i int) {
		resp := upload(t, fmt.Sprintf("%s/v1/images?slide=m%d&complete=1", td.url, i), "image/png", pngBytes(t, 40, 40, 250))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("upload m%d: %d", i, resp.StatusCode)
		}
	}
	for i := 0; i < 3; i++ {
		slide(i)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { _, ids := sub.resultIDs(t, resultTopic); return len(ids) == 3 }, "3 results before the outage")
	// ... and acknowledged: a result the broker got but whose PUBACK the
	// stop cut off is sent again (at least once), which is not what this
	// test counts.
	testutil.Eventually(t, 10*time.Second, func() bool { n, _ := td.d.mq.outbox.Depth(); return n == 0 }, "the outbox drained before the outage")
	b.Stop()
	for i := 3; i < 6; i++ {
		slide(i) // produced while the broker is down
	}
	time.Sleep(time.Second)
	b.Start()
	testutil.Eventually(t, 30*time.Second, func() bool { _, ids := sub.resultIDs(t, resultTopic); return len(ids) == 6 }, "6 results after the outage")
	total, ids := sub.resultIDs(t, resultTopic)
	if total != 6 {
		t.Errorf("%d result messages for 6 slides (duplicates are allowed by at-least-once but none was expected here)", total)
	}
	for id, r := range ids {
		if r.Cells != 1 || r.Infected != 1 || r.Verdict != verdictInconclusive || r.ParasitemiaPct != nil {
			t.Errorf("result %s: %+v", id, r)
		}
	}
	// A clean stop publishes offline, retained.
	td.stop(t)
	testutil.Eventually(t, 10*time.Second, func() bool {
		ms := sub.messages(statusTopic)
		var last statusPayload
		json.Unmarshal(ms[len(ms)-1], &last)
		return last.State == "offline"
	}, "offline status after stop")
}
