// The tutorial's event publisher (import paths updated, a failed connect exits, and a flush
// before exit so its last channel message is not lost).
package main

import (
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	natsp "github.com/nats-io/nats.go/encoders/protobuf"

	transport "shoalinterop/transport"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Println("Wrong number of arguments. Need NATS server address.")
		return
	}
	nc, err := nats.Connect(os.Args[1])
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	ec, err := nats.NewEncodedConn(nc, natsp.PROTOBUF_ENCODER)
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	defer ec.Close()

	for i := 0; i < 5; i++ {
		myMessage := transport.TextMessage{Id: int32(i), Body: "Hello over standard!"}
		err := ec.Publish("Messaging.Text.Standard", &myMessage)
		if err != nil {
			fmt.Println(err)
		}
	}
	for i := 5; i < 10; i++ {
		myMessage := transport.TextMessage{Id: int32(i), Body: "Hello, please respond!"}
		res := transport.TextMessage{}
		err := ec.Request("Messaging.Text.Respond", &myMessage, &res, 1000*time.Millisecond)
		if err != nil {
			fmt.Println("request failed:", err)
			continue
		}
		fmt.Println(res.Body, "with id", res.Id)
	}
	sendChannel := make(chan *transport.TextMessage)
	ec.BindSendChan("Messaging.Text.Channel", sendChannel)
	for i := 10; i < 15; i++ {
		myMessage := transport.TextMessage{Id: int32(i), Body: "Hello over channel!"}
		sendChannel <- &myMessage
	}
	close(sendChannel)
	time.Sleep(100 * time.Millisecond)
	ec.Flush()
}
