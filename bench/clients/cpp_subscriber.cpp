// An unmodified C++ Tango event subscriber, for `bench healing`: prints one
// line per event, "<unix time> ok" or "<unix time> err <reason>".
// Built by the benchmark when a C++ compiler and cppTango's headers are there:
//   g++ -O1 -o cpp_subscriber cpp_subscriber.cpp $(pkg-config --cflags --libs tango)
// Run: TANGO_HOST=... cpp_subscriber DEVICE ATTRIBUTE
#include <tango.h>
#include <chrono>
#include <cstdio>
#include <thread>

static double now_s()
{
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

class Printer : public Tango::CallBack
{
    void push_event(Tango::EventData *ev) override
    {
        if(ev->err)
            printf("%.4f err %s\n", now_s(), ev->errors[0].reason.in());
        else
            printf("%.4f ok\n", now_s());
        fflush(stdout);
    }
};

int main(int argc, char **argv)
{
    if(argc < 3)
    {
        fprintf(stderr, "usage: cpp_subscriber DEVICE ATTRIBUTE\n");
        return 2;
    }
    Tango::DeviceProxy dev(argv[1]);
    Printer printer;
    dev.subscribe_event(argv[2], Tango::CHANGE_EVENT, &printer);
    printf("%.4f subscribed (cppTango %s)\n", now_s(), Tango::TgLibVers);
    fflush(stdout);
    for(;;)
        std::this_thread::sleep_for(std::chrono::seconds(3600));
}
