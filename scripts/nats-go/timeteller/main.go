// The tutorial's time teller (import paths updated; a failed connect exits).
package main

import (
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	transport "shoalinterop/transport"
)

var nc *nats.Conn

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

	nc.QueueSubscribe("TimeTeller", "TimeTellers", replyWithTime)
	nc.Flush()
	fmt.Println("ready")
	select {}
}

func replyWithTime(m *nats.Msg) {
	curTime := transport.Time{Time: time.Now().Format(time.RFC3339)}
	data, err := proto.Marshal(&curTime)
	if err != nil {
		fmt.Println(err)
		return
	}
	nc.Publish(m.Reply, data)
}
