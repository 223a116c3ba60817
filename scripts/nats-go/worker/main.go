// The tutorial's worker loop, verbatim but for import paths, a UUID from crypto/rand, a
// failed connect that exits, and a short sleep after a failed request (it says "waiting 2
// seconds" and does not wait). Its other defects stay: it counts any body as words, so an
// empty "no work" task makes it upload the file server's 404 page as a result and report task
// 0 finished with an empty uuid.
package main

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io/ioutil"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	transport "shoalinterop/transport"
)

var nc *nats.Conn

func newUUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func main() {
	if len(os.Args) != 2 {
		fmt.Println("Wrong number of arguments. Need NATS server address.")
		return
	}
	var err error
	nc, err = nats.Connect(os.Args[1])
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	for i := 0; i < 8; i++ {
		go doWork()
	}
	select {}
}

func doWork() {
	for {
		msg, err := nc.Request("Work.TaskToDo", nil, 1*time.Second)
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		curTask := transport.Task{}
		err = proto.Unmarshal(msg.Data, &curTask)
		if err != nil {
			continue
		}
		msg, err = nc.Request("Discovery.FileServer", nil, 1000*time.Millisecond)
		if err != nil {
			continue
		}
		fileServerAddressTransport := transport.DiscoverableServiceTransport{}
		err = proto.Unmarshal(msg.Data, &fileServerAddressTransport)
		if err != nil {
			continue
		}
		fileServerAddress := fileServerAddressTransport.Address
		r, err := http.Get(fileServerAddress + "/" + curTask.Uuid)
		if err != nil {
			continue
		}
		data, err := ioutil.ReadAll(r.Body)
		if err != nil {
			continue
		}
		words := strings.Split(string(data), ",")
		sort.Strings(words)
		wordCounts := make(map[string]int)
		for i := 0; i < len(words); i++ {
			wordCounts[words[i]] = wordCounts[words[i]] + 1
		}
		resultData := make([]byte, 0, 1024)
		buf := bytes.NewBuffer(resultData)
		for key, value := range wordCounts {
			fmt.Fprintln(buf, key, ":", value)
		}
		curTask.Finisheduuid = newUUID()
		r, err = http.Post(fileServerAddress+"/"+curTask.Finisheduuid, "", buf)
		if err != nil || r.StatusCode != http.StatusOK {
			continue
		}
		data, err = proto.Marshal(&curTask)
		if err != nil {
			continue
		}
		nc.Publish("Work.TaskFinished", data)
	}
}
